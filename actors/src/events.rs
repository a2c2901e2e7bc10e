//! The event log: every phase change and notable happening, persisted with
//! a monotonic sequence number and then broadcast to live subscribers.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{broadcast, Mutex};

use crate::store::{now_ms, Store};
use crate::vm::phase::{Rung, VmPhase};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned by the store; strictly increasing across the whole daemon.
    #[serde(default)]
    pub seq: u64,
    pub ts_ms: u64,
    pub vm: String,
    pub kind: EventKind,
    /// The VM's generation after this event; clients use it to spot stale reads.
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Phase { phase: VmPhase },
    Ready,
    /// A ladder rung was taken.
    Rung { rung: Rung },
    /// A child actor failed and was restarted alone.
    ChildRestarted { child: String },
    GuestPanicked,
    /// The guest rebooted; it is not ready until its new boot says so.
    GuestReset,
    /// A supervisor restart found the VM's process alive and took it back.
    Adopted { pid: i32 },
    /// A supervisor restart found the VM's process gone.
    Lost { reason: String },
    /// The restart policy will start the VM again after `delay_ms`
    /// (drawn from [0, bound_ms]).
    RestartScheduled { attempt: u32, delay_ms: u64, bound_ms: u64 },
    /// An orphan (a paddock process without a record) was stopped.
    OrphanStopped { pid: i32, rung: String },
    Removed,
    /// Something worth telling that is not a VM's (e.g. image pull progress).
    Note,
}

/// Serialises publishing so that subscribers see sequence numbers in order.
#[derive(Clone)]
pub struct EventBus {
    store: Store,
    tx: broadcast::Sender<Event>,
    order: Arc<Mutex<()>>,
}

impl EventBus {
    pub fn new(store: Store) -> Self {
        let (tx, _) = broadcast::channel(4096);
        EventBus { store, tx, order: Arc::default() }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Persists, then broadcasts. A failed write is logged and the event is
    /// still broadcast (with seq 0): live observers matter more than a gap
    /// in the history.
    pub async fn publish(&self, vm: &str, kind: EventKind, generation: u64, message: Option<String>) -> Event {
        let _order = self.order.lock().await;
        let mut ev = Event { seq: 0, ts_ms: now_ms(), vm: vm.to_string(), kind, generation, message };
        match self.store.append_event(&ev).await {
            Ok(seq) => ev.seq = seq,
            Err(e) => tracing::error!(vm, error = %e, "cannot persist event"),
        }
        let _ = self.tx.send(ev.clone());
        ev
    }
}
