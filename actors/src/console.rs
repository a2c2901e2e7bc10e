//! The Console actor: the VM's serial console for people and programs.
//!
//! The hypervisor writes every byte of serial output to console.log itself
//! (QEMU's chardev `logfile=`), so the log has no gap while the supervisor
//! is down. This actor tails that file into a 256 KiB ring buffer, fans it
//! out to any number of followers, watches for the readiness pattern, and
//! holds the serial socket for the one interactive writer. Data arriving on
//! the socket is only a wake-up: the file is the single source of output,
//! so followers never see a byte twice or out of order.

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use regex::Regex;
use std::io::SeekFrom;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

use crate::backend::RunPaths;
use crate::ring::Ring;
use crate::vm::VmMessage;

pub const RING_BYTES: usize = 256 * 1024;
/// Without socket traffic the log is still polled this often (QEMU writes
/// the log just after the socket, so a wake-up can come a moment early).
const TICK: Duration = Duration::from_millis(100);
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
    /// The guest rebooted: readiness counts only output written from now.
    Rearm,
}

pub struct ConsoleActor;

pub struct ConsoleArgs {
    pub vm: ActorRef<VmMessage>,
    pub paths: RunPaths,
    pub ready_pattern: Option<Regex>,
    /// Byte offset in console.log where the current boot's output starts:
    /// only output from there on counts for readiness (QEMU appends every
    /// run to the same log).
    pub ready_from: u64,
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
    /// File offset of the next byte `take_output` sees, and where this
    /// boot's output starts.
    pos: u64,
    ready_from: u64,
    log: std::path::PathBuf,
    pump: tokio::task::JoinHandle<()>,
}

impl Actor for ConsoleActor {
    type Msg = ConsoleMessage;
    type State = ConsoleState;
    type Arguments = ConsoleArgs;

    async fn pre_start(&self, me: ActorRef<Self::Msg>, args: ConsoleArgs) -> Result<ConsoleState, ActorProcessingErr> {
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .open(&args.paths.console_log)
            .await
            .map_err(|e| format!("cannot open {:?}: {e}", args.paths.console_log))?;
        let len = file.metadata().await?.len();
        // Start with the newest part of the log, so a restarted console
        // (or a restarted supervisor) still has a backlog.
        let start = len.saturating_sub(RING_BYTES as u64);
        file.seek(SeekFrom::Start(start)).await?;
        let mut backlog = Vec::new();
        (&mut file).take(len - start).read_to_end(&mut backlog).await?;
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
        let offset = start + backlog.len() as u64;
        let pump = tokio::spawn(pump(file, offset, reader, me.clone()));
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
            pos: start,
            ready_from: args.ready_from,
            log: args.paths.console_log.clone(),
            pump,
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
            ConsoleMessage::Rearm => {
                st.ready_sent = false;
                st.partial.clear();
                st.ready_from = std::fs::metadata(&st.log).map(|m| m.len()).unwrap_or(st.pos);
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<Self::Msg>, st: &mut ConsoleState) -> Result<(), ActorProcessingErr> {
        st.pump.abort();
        Ok(())
    }
}

impl ConsoleState {
    fn follow(&self) -> ConsoleFollow {
        ConsoleFollow { backlog: Bytes::from(self.ring.snapshot()), live: self.live.subscribe() }
    }

    fn take_output(&mut self, data: &[u8]) {
        self.ring.push(data);
        let at = self.pos;
        self.pos += data.len() as u64;
        let Some(pattern) = &self.pattern else { return };
        if self.ready_sent || self.pos <= self.ready_from {
            return;
        }
        // Output of an earlier boot never counts.
        let skip = self.ready_from.saturating_sub(at) as usize;
        for &b in &data[skip..] {
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

/// Tails the log from `offset`, woken by socket traffic or the tick.
async fn pump(mut file: tokio::fs::File, mut offset: u64, mut socket: Option<tokio::net::unix::OwnedReadHalf>, me: ActorRef<ConsoleMessage>) {
    // Small buffers: a console is slow, and there is one pump per VM.
    let mut discard = vec![0u8; 2048];
    let mut chunk = vec![0u8; 8192];
    loop {
        match socket.as_mut() {
            Some(s) => {
                tokio::select! {
                    r = s.read(&mut discard) => {
                        if matches!(r, Ok(0) | Err(_)) {
                            socket = None; // hypervisor gone; keep draining the file
                        }
                    }
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            None => tokio::time::sleep(TICK).await,
        }
        loop {
            if file.seek(SeekFrom::Start(offset)).await.is_err() {
                break;
            }
            match file.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    offset += n as u64;
                    if me.cast(ConsoleMessage::Output(Bytes::copy_from_slice(&chunk[..n]))).is_err() {
                        return;
                    }
                }
            }
        }
    }
}
