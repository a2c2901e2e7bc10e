/// Errors of the network layer; each names the spec field it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("network.forwards[{index}]: {message}")]
    Forward { index: usize, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;
