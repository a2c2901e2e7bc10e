/// Errors of the network layer, each with the thing it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network.forwards[{index}]: {message}")]
    Forward { index: usize, message: String },
    #[error("address pool: {0}")]
    Pool(String),
    #[error("TAP device {name}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {name} exists and is not Paddock's ({detail}); remove or rename it, it was left untouched")]
    Foreign { name: String, detail: String },
    #[error("netlink: {what}: {message}")]
    Netlink { what: String, message: String },
    #[error("`{argv}` failed ({status}): {stderr}")]
    Command { argv: String, status: String, stderr: String },
}

pub type Result<T> = std::result::Result<T, Error>;
