//! Idempotent creation for outside schedulers: a create carrying a key
//! answers, when repeated with the same key and the same spec, the first
//! request's result instead of a second VM (or a "name taken" error); the
//! same key with a different spec is a conflict.
//!
//! Keys live in memory, bounded (the oldest are forgotten first): a
//! scheduler retries within seconds, not across daemon restarts. A create
//! that failed is not remembered, so its retry tries again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::{Error, Result, VmInfo, VmSpec};

/// Keys remembered at once.
pub const MAX_KEYS: usize = 4096;
/// Longest key.
pub const MAX_KEY_LEN: usize = 255;

/// What the first successful create with a key answered.
#[derive(Clone)]
struct Outcome {
    spec: VmSpec,
    info: VmInfo,
}

type Slot = Arc<tokio::sync::Mutex<Option<Outcome>>>;

#[derive(Default)]
pub struct IdempotencyKeys {
    inner: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    slots: HashMap<String, Slot>,
    order: VecDeque<String>,
}

/// Whether the answer is the first request's, replayed.
pub struct Created {
    pub info: VmInfo,
    pub replayed: bool,
}

/// A key must be printable ASCII without spaces, 1-255 bytes.
pub fn check_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("the idempotency key must be 1 to {MAX_KEY_LEN} printable ASCII characters without spaces (e.g. a UUID)"));
    }
    Ok(())
}

impl IdempotencyKeys {
    fn slot(&self, key: &str) -> Slot {
        let mut k = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = k.slots.get(key) {
            return s.clone();
        }
        let slot = Slot::default();
        k.slots.insert(key.to_string(), slot.clone());
        k.order.push_back(key.to_string());
        while k.order.len() > MAX_KEYS {
            if let Some(old) = k.order.pop_front() {
                k.slots.remove(&old);
            }
        }
        slot
    }

    /// Runs `create` once per key: concurrent and later requests with the
    /// same key wait for the first and get its answer.
    pub async fn run<F, Fut>(&self, key: &str, spec: VmSpec, create: F) -> Result<Created>
    where
        F: FnOnce(VmSpec) -> Fut,
        Fut: std::future::Future<Output = Result<VmInfo>>,
    {
        let slot = self.slot(key);
        let mut first = slot.lock().await;
        if let Some(o) = first.as_ref() {
            if o.spec != spec {
                return Err(Error::Conflict {
                    name: spec.name,
                    message: format!(
                        "idempotency key {key:?} was used to create VM {:?} with a different spec; use a new key for a new request",
                        o.spec.name
                    ),
                });
            }
            return Ok(Created { info: o.info.clone(), replayed: true });
        }
        let info = create(spec.clone()).await?;
        *first = Some(Outcome { spec, info: info.clone() });
        Ok(Created { info, replayed: false })
    }
}
