//! The event log: every phase change and notable happening, persisted with
//! a monotonic sequence number and then broadcast to live subscribers.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, Mutex};

use crate::bounds::EventRetention;
use crate::store::{now_ms, RowChange, Store, StoreError};
use crate::state::phase::{Rung, VmPhase};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// A snapshot of the VM was written (`paddock snapshot`).
    SnapshotTaken { snapshot: String, bytes: u64 },
    /// The VM started from a snapshot (`boot.snapshot`, `paddock restore`).
    Restored { snapshot: String },
    /// `boot.snapshot` does not fit this host or spec: the VM boots cold
    /// (the message says why).
    SnapshotSkipped { snapshot: String },
    /// Something worth telling that is not a VM's (e.g. image pull progress).
    Note,
}

/// Live events buffered per subscriber; one that falls further behind is
/// told (`RecvError::Lagged`) and must catch up from the store.
pub const LIVE_CAPACITY: usize = 4096;
/// Retention also runs after this many writes, so a burst (a restart
/// storm) is trimmed long before the periodic pass.
pub const PRUNE_EVERY: u64 = 1000;

/// Serialises publishing so that subscribers see sequence numbers in order.
#[derive(Clone)]
pub struct EventBus {
    store: Store,
    tx: broadcast::Sender<Event>,
    order: Arc<Mutex<()>>,
    retention: EventRetention,
    written: Arc<AtomicU64>,
}

impl EventBus {
    pub fn new(store: Store) -> Self {
        Self::with_retention(store, EventRetention::default())
    }

    pub fn with_retention(store: Store, retention: EventRetention) -> Self {
        let (tx, _) = broadcast::channel(LIVE_CAPACITY);
        EventBus { store, tx, order: Arc::default(), retention, written: Arc::default() }
    }

    /// Applies the retention bounds now; logs what it deleted.
    pub async fn prune(&self) {
        match self.store.prune_events(self.retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, max_count = self.retention.max_count, "old events deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot apply event retention"),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Events published since this bus was made (for the metrics).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
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
        drop(_order);
        self.count_written();
        ev
    }

    /// Writes `change` and the event in one transaction, then broadcasts.
    /// Unlike `publish`, a failed write is the caller's error: neither
    /// the change nor the event happened, and nothing is broadcast.
    pub async fn publish_with(&self, change: RowChange, kind: EventKind, generation: u64) -> Result<Event, StoreError> {
        let vm = match &change {
            RowChange::VmInserted { spec, .. } => spec.name.clone(),
            RowChange::Phase { name, .. } => name.clone(),
        };
        let _order = self.order.lock().await;
        let mut ev = Event { seq: 0, ts_ms: now_ms(), vm, kind, generation, message: None };
        ev.seq = self.store.write_with_event(change, &ev).await?;
        let _ = self.tx.send(ev.clone());
        drop(_order);
        self.count_written();
        Ok(ev)
    }

    /// Applies retention every PRUNE_EVERY events, off the caller's path.
    fn count_written(&self) {
        if self.written.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            let bus = self.clone();
            tokio::spawn(async move { bus.prune().await });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn retention_runs_after_a_batch_of_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let bus = EventBus::with_retention(store.clone(), EventRetention { max_count: 10, max_age: Duration::from_secs(3600) });
        for _ in 0..PRUNE_EVERY {
            bus.publish("v", EventKind::Note, 0, None).await;
        }
        // The batch's prune runs in the background: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.event_count().await.unwrap() != 10 {
            assert!(Instant::now() < deadline, "not trimmed after {PRUNE_EVERY} writes");
            tokio::task::yield_now().await;
        }
    }
}
