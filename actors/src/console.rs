//! The Console actor: the VM's serial console for people and programs.
//!
//! The hypervisor writes every byte of serial output to console.log itself
//! (QEMU's chardev `logfile=`), so the log has no gap while the supervisor
//! is down. This actor tails that file (`console_log::LogTail`, which also
//! keeps it bounded by copy-truncate rotation) into a 256 KiB ring buffer,
//! fans it out to any number of followers, watches for the readiness
//! pattern, and connects the serial socket for the one interactive writer.
//! The file is the single source of output, so followers never see a byte
//! twice or out of order.
//!
//! The file is followed with inotify, woken at most every `COALESCE`
//! (a guest printing in a loop costs a few reads a second, not one per
//! write), with a slow poll as a safety net and as the fallback where
//! inotify is unavailable.
//!
//! The serial socket is connected only while a writer is attached. QEMU
//! copies every output byte to a connected client, one write per byte; a
//! client that reads slowly stalls the guest's serial port (and so the
//! log), one that reads promptly costs a wake-up per byte. With nobody
//! connected QEMU drops the socket copy and still writes the log.

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use regex::Regex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

use crate::backend::RunPaths;
use crate::bounds::ConsoleLogLimits;
use crate::console_log::{read_tail, LogTail};
use crate::file_watch::FileWatch;
use crate::ring::Ring;
use crate::vm::{VmMessage, VmNotice};

pub const RING_BYTES: usize = 256 * 1024;
/// The longest the serial socket stays open after the writer's input ends,
/// waiting for QEMU to take what was typed (a starved guest is slow).
const INPUT_LINGER: Duration = Duration::from_secs(10);
/// How often the unread input is checked during that wait.
const INPUT_CHECK: Duration = Duration::from_millis(20);
/// After a wake-up the log is read, then the pump rests this long so that
/// a flood of writes is read in a few large reads.
const COALESCE: Duration = Duration::from_millis(50);
/// Safety net: the log is read this often even without a notification.
const SLOW_POLL: Duration = Duration::from_secs(2);
/// Where inotify is unavailable (e.g. out of watches), poll this often.
const FALLBACK_POLL: Duration = Duration::from_millis(250);
const MAX_PARTIAL_LINE: usize = 4096;

/// What a follower gets: everything in the ring, then live output.
pub struct ConsoleFollow {
    pub backlog: Bytes,
    pub live: broadcast::Receiver<Bytes>,
}

/// What the interactive writer gets in addition: a way to type.
pub struct ConsoleAttach {
    pub follow: ConsoleFollow,
    pub input: mpsc::Sender<Bytes>,
}

pub enum ConsoleMessage {
    Output(Bytes),
    Follow(RpcReplyPort<ConsoleFollow>),
    /// Fails when another writer is attached.
    Attach(RpcReplyPort<Result<ConsoleAttach, String>>),
    /// The writer's session ended; the socket is closed.
    Detached,
    /// The guest rebooted: readiness counts only output that arrives from now.
    Rearm,
}

pub struct ConsoleActor;

pub struct ConsoleArgs {
    pub vm: ActorRef<VmMessage>,
    pub paths: RunPaths,
    pub ready_pattern: Option<Regex>,
    /// Bounds of console.log and its rotations.
    pub limits: ConsoleLogLimits,
    /// Byte offset in console.log where the current boot's output starts:
    /// only output from there on counts for readiness (QEMU appends every
    /// run to the same log).
    pub ready_from: u64,
}

pub struct ConsoleState {
    vm: ActorRef<VmMessage>,
    ring: Ring,
    live: broadcast::Sender<Bytes>,
    serial_socket: std::path::PathBuf,
    attached: bool,
    pattern: Option<Regex>,
    partial: Vec<u8>,
    ready_sent: bool,
    pump: tokio::task::JoinHandle<()>,
    /// Reads (and drops) the socket's copy of the output while attached.
    drain: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for ConsoleActor {
    type Msg = ConsoleMessage;
    type State = ConsoleState;
    type Arguments = ConsoleArgs;

    async fn pre_start(&self, me: ActorRef<Self::Msg>, args: ConsoleArgs) -> Result<ConsoleState, ActorProcessingErr> {
        let log = args.paths.console_log.clone();
        // Start with the newest output (across a rotation), so a restarted
        // console (or a restarted supervisor) still has a backlog.
        let (backlog, len) = tokio::task::spawn_blocking(move || read_tail(&log, args.limits.files, RING_BYTES))
            .await?
            .map_err(|e| format!("cannot read {:?}: {e}", args.paths.console_log))?;
        let tail = LogTail::open(&args.paths.console_log, len, args.limits)
            .map_err(|e| format!("cannot open {:?}: {e}", args.paths.console_log))?;
        let watch = FileWatch::new(&args.paths.console_log);
        let pump = tokio::spawn(pump(tail, watch, me.clone()));
        // Slots are allocated up front; followers that fall further behind
        // than this skip ahead rather than slow the console.
        let (live, _) = broadcast::channel(64);
        let mut st = ConsoleState {
            vm: args.vm,
            ring: Ring::new(RING_BYTES),
            live,
            serial_socket: args.paths.serial_socket.clone(),
            attached: false,
            pattern: args.ready_pattern,
            partial: Vec::new(),
            ready_sent: false,
            pump,
            drain: None,
        };
        // The backlog ends with the live file's newest bytes; of those, only
        // what this boot wrote (after `ready_from`) may make it ready. Older
        // output (an earlier run, a rotated file) fills the ring but never
        // counts.
        let current = usize::try_from(len.saturating_sub(args.ready_from)).unwrap_or(usize::MAX).min(backlog.len());
        let earlier = backlog.len() - current;
        st.ring.push(&backlog[..earlier]);
        st.take_output(&backlog[earlier..]);
        Ok(st)
    }

    async fn handle(&self, me: ActorRef<Self::Msg>, msg: ConsoleMessage, st: &mut ConsoleState) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsoleMessage::Output(data) => {
                // Fault tests fail this actor on purpose to see it restarted alone.
                #[cfg(feature = "failpoints")]
                if fail::eval("console.output", |_| ()).is_some() {
                    return Err("failpoint console.output".into());
                }
                st.take_output(&data);
                let _ = st.live.send(data);
            }
            ConsoleMessage::Follow(reply) => {
                let _ = reply.send(st.follow());
            }
            ConsoleMessage::Attach(reply) => {
                if st.attached {
                    let _ = reply.send(Err("another session is attached to this console; detach it first".into()));
                    return Ok(());
                }
                let (reader, mut writer) = match UnixStream::connect(&st.serial_socket).await {
                    Ok(sock) => sock.into_split(),
                    Err(e) => {
                        tracing::warn!(path = ?st.serial_socket, error = %e, "cannot connect the serial socket");
                        let _ = reply.send(Err(format!("the serial socket is not available ({e}); the console is read-only")));
                        return Ok(());
                    }
                };
                st.attached = true;
                st.drain = Some(tokio::spawn(drain_socket(reader)));
                let (tx, mut rx) = mpsc::channel::<Bytes>(64);
                let me = me.clone();
                tokio::spawn(async move {
                    while let Some(data) = rx.recv().await {
                        if writer.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    // QEMU reads the socket only as fast as the guest's UART
                    // takes bytes, and drops what is unread when the socket
                    // closes: input piped in just before a detach (`echo
                    // reboot | paddock console`) must arrive first. A guest
                    // starved of CPU can take seconds for a line.
                    let deadline = tokio::time::Instant::now() + INPUT_LINGER;
                    while unread_input(&writer) > 0 && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(INPUT_CHECK).await;
                    }
                    let _ = me.cast(ConsoleMessage::Detached);
                });
                let _ = reply.send(Ok(ConsoleAttach { follow: st.follow(), input: tx }));
            }
            ConsoleMessage::Rearm => {
                st.ready_sent = false;
                st.partial.clear();
            }
            ConsoleMessage::Detached => {
                st.attached = false;
                // Closing the socket: QEMU stops sending its copy.
                if let Some(d) = st.drain.take() {
                    d.abort();
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<Self::Msg>, st: &mut ConsoleState) -> Result<(), ActorProcessingErr> {
        st.pump.abort();
        // Releases the serial socket: QEMU serves one client at a time.
        if let Some(d) = &st.drain {
            d.abort();
        }
        Ok(())
    }
}

impl ConsoleState {
    fn follow(&self) -> ConsoleFollow {
        ConsoleFollow { backlog: Bytes::from(self.ring.snapshot()), live: self.live.subscribe() }
    }

    fn take_output(&mut self, data: &[u8]) {
        self.ring.push(data);
        let Some(pattern) = &self.pattern else { return };
        if self.ready_sent {
            return;
        }
        for &b in data {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial);
                if pattern.is_match(line.trim_end_matches('\r')) {
                    self.ready_sent = true;
                    let _ = self.vm.cast(VmNotice::ConsoleReady.into());
                    self.partial.clear();
                    return;
                }
                self.partial.clear();
            } else if self.partial.len() < MAX_PARTIAL_LINE {
                self.partial.push(b);
            }
        }
    }
}

/// Follows the log: read what is new (rotating it when over its bound),
/// rest, wait for the next change.
async fn pump(mut tail: LogTail, mut watch: Option<FileWatch>, me: ActorRef<ConsoleMessage>) {
    loop {
        // File reads are quick, but they are blocking calls.
        let polled = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let r = tail.poll(&mut |d| out.push(Bytes::copy_from_slice(d)));
            (tail, r, out)
        })
        .await;
        let Ok((back, r, chunks)) = polled else { return };
        tail = back;
        for c in chunks {
            if me.cast(ConsoleMessage::Output(c)).is_err() {
                return;
            }
        }
        if let Err(e) = r {
            tracing::warn!(offset = tail.offset(), error = %e, "cannot read or rotate the console log");
        }
        tokio::time::sleep(COALESCE).await;
        match watch.as_mut() {
            Some(w) => {
                if let Err(e) = w.changed(SLOW_POLL).await {
                    tracing::warn!(error = %e, "inotify failed; polling the console log instead");
                    watch = None;
                }
            }
            None => tokio::time::sleep(FALLBACK_POLL).await,
        }
    }
}

/// QEMU sends console output to the connected serial socket too; it must
/// be read promptly (a full socket stalls the guest's serial port) but the
/// file is the source, so it is dropped.
/// Bytes written to the serial socket that QEMU has not read yet (0 when
/// unknown: the wait is only a courtesy).
fn unread_input(writer: &tokio::net::unix::OwnedWriteHalf) -> libc::c_int {
    use std::os::fd::AsRawFd;
    let fd = writer.as_ref().as_raw_fd();
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) on a socket we own writes one c_int.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    if rc == 0 { queued } else { 0 }
}

async fn drain_socket(mut socket: tokio::net::unix::OwnedReadHalf) {
    let mut discard = vec![0u8; 16 * 1024];
    while let Ok(n) = socket.read(&mut discard).await {
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detach waits on this figure: it must see input the peer has not
    /// read, and see it gone once read.
    #[tokio::test]
    async fn unread_input_counts_what_the_peer_has_not_read() {
        let (a, mut b) = UnixStream::pair().expect("socketpair");
        let (_r, mut w) = a.into_split();
        assert_eq!(unread_input(&w), 0);
        w.write_all(b"reboot -f\n").await.expect("write");
        assert!(unread_input(&w) > 0, "unread input not seen");
        let mut buf = [0u8; 64];
        let n = b.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"reboot -f\n");
        assert_eq!(unread_input(&w), 0);
    }
}
