//! The Console actor: the VM's serial console for people and programs.
//!
//! The hypervisor writes every byte of serial output to console.log itself
//! (QEMU's chardev `logfile=`), so the log has no gap while the supervisor
//! is down. This actor tails that file (`console_log::LogTail`, which also
//! keeps it bounded by copy-truncate rotation) into a 256 KiB ring buffer,
//! fans it out to any number of followers, watches for the readiness
//! pattern, and holds the serial socket for the one interactive writer.
//! The file is the single source of output, so followers never see a byte
//! twice or out of order.
//!
//! The file is followed with inotify, woken at most every `COALESCE`
//! (a guest printing in a loop costs a few reads a second, not one per
//! write), with a slow poll as a safety net and as the fallback where
//! inotify is unavailable. What QEMU also sends on the serial socket is
//! drained and dropped at the same pace.

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use regex::Regex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

use crate::backend::RunPaths;
use crate::bounds::ConsoleLogLimits;
use crate::console_log::{read_tail, LogTail};
use crate::file_watch::FileWatch;
use crate::ring::Ring;
use crate::vm::VmMessage;

pub const RING_BYTES: usize = 256 * 1024;
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
    Detached(Option<OwnedWriteHalf>),
}

pub struct ConsoleActor;

pub struct ConsoleArgs {
    pub vm: ActorRef<VmMessage>,
    pub paths: RunPaths,
    pub ready_pattern: Option<Regex>,
    /// Bounds of console.log and its rotations.
    pub limits: ConsoleLogLimits,
}

pub struct ConsoleState {
    vm: ActorRef<VmMessage>,
    ring: Ring,
    live: broadcast::Sender<Bytes>,
    writer: Option<OwnedWriteHalf>,
    attached: bool,
    pattern: Option<Regex>,
    partial: Vec<u8>,
    ready_sent: bool,
    pump: tokio::task::JoinHandle<()>,
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
        let (backlog, offset) = tokio::task::spawn_blocking(move || read_tail(&log, args.limits.files, RING_BYTES))
            .await?
            .map_err(|e| format!("cannot read {:?}: {e}", args.paths.console_log))?;
        let tail = LogTail::open(&args.paths.console_log, offset, args.limits)
            .map_err(|e| format!("cannot open {:?}: {e}", args.paths.console_log))?;
        let (reader, writer) = match UnixStream::connect(&args.paths.serial_socket).await {
            Ok(s) => {
                let (r, w) = s.into_split();
                (Some(r), Some(w))
            }
            Err(e) => {
                tracing::warn!(path = ?args.paths.serial_socket, error = %e, "serial socket unavailable; console is read-only");
                (None, None)
            }
        };
        let watch = FileWatch::new(&args.paths.console_log);
        let pump = tokio::spawn(pump(tail, watch, me.clone()));
        let drain = reader.map(|r| tokio::spawn(drain_socket(r)));
        // Slots are allocated up front; followers that fall further behind
        // than this skip ahead rather than slow the console.
        let (live, _) = broadcast::channel(64);
        let mut st = ConsoleState {
            vm: args.vm,
            ring: Ring::new(RING_BYTES),
            live,
            writer,
            attached: false,
            pattern: args.ready_pattern,
            partial: Vec::new(),
            ready_sent: false,
            pump,
            drain,
        };
        st.take_output(&backlog);
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
                let Some(mut writer) = st.writer.take() else {
                    let _ = reply.send(Err("the serial socket is not connected".into()));
                    return Ok(());
                };
                st.attached = true;
                let (tx, mut rx) = mpsc::channel::<Bytes>(64);
                let me = me.clone();
                tokio::spawn(async move {
                    let mut ok = true;
                    while let Some(data) = rx.recv().await {
                        if writer.write_all(&data).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    let _ = me.cast(ConsoleMessage::Detached(ok.then_some(writer)));
                });
                let _ = reply.send(Ok(ConsoleAttach { follow: st.follow(), input: tx }));
            }
            ConsoleMessage::Detached(writer) => {
                st.attached = false;
                st.writer = writer;
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
                    let _ = self.vm.cast(VmMessage::ConsoleReady);
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

/// QEMU also sends console output to the connected serial socket; it must
/// be read (a full socket would stall the guest's serial port) but the
/// file is the source, so it is dropped, in large reads at a slow pace.
async fn drain_socket(mut socket: tokio::net::unix::OwnedReadHalf) {
    let mut discard = vec![0u8; 16 * 1024];
    loop {
        match socket.read(&mut discard).await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(COALESCE).await,
        }
    }
}
