//! Durable state: one SQLite database (WAL, synchronous=FULL) in the state
//! directory. VMs with their spec, desired state, phase and generation;
//! hypervisor runs; the event log.
//!
//! Every call runs on the blocking pool: SQLite is synchronous and an actor
//! handler must not block a runtime thread.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::events::Event;
use crate::spec::VmSpec;
use crate::state::phase::VmPhase;

const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state database {path:?}; move it aside to start empty, or restore it from a backup")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path:?} is damaged ({detail}); move it aside to start empty, or restore it from a backup")]
    Corrupt { path: PathBuf, detail: String },
    #[error("state database {path:?} has schema version {found}, newer than this paddock ({SCHEMA_VERSION})")]
    TooNew { path: PathBuf, found: i64 },
    #[error("database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("stored value does not decode")]
    Decode(#[from] serde_json::Error),
    #[error("database worker thread failed")]
    Worker,
}

/// What the database holds for one VM.
#[derive(Debug, Clone)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub desired: Desired,
    pub phase: VmPhase,
    pub generation: u64,
    /// Created by an `up` that has not yet seen the VM run: if the
    /// supervisor dies now, the next start rolls the VM back.
    pub provisional: bool,
}

/// What the operator last asked for, written before acting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
    Deleted,
}

impl Desired {
    fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
            Desired::Deleted => "deleted",
        }
    }
    fn parse(s: &str) -> Desired {
        match s {
            "running" => Desired::Running,
            "deleted" => Desired::Deleted,
            _ => Desired::Stopped,
        }
    }
}

/// One hypervisor process, recorded right after it was spawned.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub vm: String,
    pub pid: i32,
    /// Field 22 of /proc/PID/stat, in clock ticks since boot.
    pub start_time: u64,
    pub boot_id: String,
    pub paths: crate::state::run_paths::RunPaths,
}

/// A row change that travels with its event (`write_with_event`).
// Built once per write and moved straight into it: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum RowChange {
    /// An `up`'s new, provisional VM row (desired `running`).
    VmInserted { spec: VmSpec, phase: VmPhase },
    /// A phase transition, with an `up`'s confirmation.
    Phase { name: String, phase: VmPhase, generation: u64, confirm: bool },
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the database and checks it before anything else
    /// runs: a damaged database stops the daemon instead of being "repaired"
    /// into forgetting VMs.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        let corrupt = |detail: String| StoreError::Corrupt { path: path.to_path_buf(), detail };
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| corrupt(e.to_string()))?;
        if check != "ok" {
            return Err(corrupt(check));
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| corrupt(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| corrupt(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| corrupt(e.to_string()))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found: version });
        }
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS vms (
                 name TEXT PRIMARY KEY,
                 spec TEXT NOT NULL,
                 desired TEXT NOT NULL,
                 phase TEXT NOT NULL,
                 generation INTEGER NOT NULL,
                 provisional INTEGER NOT NULL DEFAULT 1,
                 created_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS runs (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 vm TEXT NOT NULL,
                 pid INTEGER NOT NULL,
                 start_time INTEGER NOT NULL,
                 boot_id TEXT NOT NULL,
                 paths TEXT NOT NULL,
                 started_ms INTEGER NOT NULL,
                 ended_ms INTEGER,
                 exit TEXT
             );
             CREATE INDEX IF NOT EXISTS runs_open ON runs (vm) WHERE ended_ms IS NULL;
             CREATE TABLE IF NOT EXISTS leases (
                 vm TEXT PRIMARY KEY,
                 idx INTEGER NOT NULL UNIQUE,
                 created_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS identities (
                 vm TEXT PRIMARY KEY,
                 idx INTEGER NOT NULL UNIQUE
             );
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 ts_ms INTEGER NOT NULL,
                 vm TEXT NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS restart_streaks (
                 vm TEXT PRIMARY KEY,
                 streak TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS meta (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             );
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .map_err(|e| corrupt(e.to_string()))?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)), path: path.to_path_buf() })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-call; SQLite's own
            // transactions keep the data consistent, so carry on.
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|_| StoreError::Worker)?
    }

    /// This state directory's identity, made once: every hypervisor this
    /// supervisor starts carries it (`INSTANCE_ENV`), and so does every
    /// run directory it makes, so that nothing of another daemon is ever
    /// taken for ours.
    pub async fn instance_id(&self) -> Result<String, StoreError> {
        let fresh = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        self.with(move |c| {
            c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance_id', ?1)", params![fresh])?;
            Ok(c.query_row("SELECT value FROM meta WHERE key = 'instance_id'", [], |r| r.get(0))?)
        })
        .await
    }

    pub async fn insert_vm(&self, spec: &VmSpec, phase: &VmPhase) -> Result<(), StoreError> {
        let name = spec.name.clone();
        let spec = serde_json::to_string(spec)?;
        let phase = serde_json::to_string(phase)?;
        self.with(move |c| {
            c.execute(
                "INSERT INTO vms (name, spec, desired, phase, generation, provisional, created_ms) VALUES (?1, ?2, 'stopped', ?3, 0, 1, ?4)",
                params![name, spec, phase, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn set_phase(&self, name: &str, phase: &VmPhase, generation: u64) -> Result<(), StoreError> {
        let name = name.to_string();
        let phase = serde_json::to_string(phase)?;
        self.with(move |c| {
            c.execute("UPDATE vms SET phase = ?2, generation = ?3 WHERE name = ?1", params![name, phase, generation as i64])?;
            Ok(())
        })
        .await
    }

    /// The VM ran once: from now on it is kept across supervisor restarts.
    pub async fn confirm(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            c.execute("UPDATE vms SET provisional = 0 WHERE name = ?1", params![name])?;
            Ok(())
        })
        .await
    }

    pub async fn set_desired(&self, name: &str, desired: Desired) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            // Unchanged: no row written, so the commit syncs nothing.
            c.execute("UPDATE vms SET desired = ?2 WHERE name = ?1 AND desired IS NOT ?2", params![name, desired.as_str()])?;
            Ok(())
        })
        .await
    }

    /// Removes the VM and its runs in one transaction; its events stay.
    pub async fn delete_vm(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM runs WHERE vm = ?1", params![name])?;
            tx.execute("DELETE FROM identities WHERE vm = ?1", params![name])?;
            tx.execute("DELETE FROM restart_streaks WHERE vm = ?1", params![name])?;
            tx.execute("DELETE FROM vms WHERE name = ?1", params![name])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The VM's crash streak, kept so a daemon restart does not forgive
    /// a crash loop.
    pub async fn save_streak(&self, name: &str, streak: &crate::state::streak::Streak) -> Result<(), StoreError> {
        let (name, body) = (name.to_string(), serde_json::to_string(streak)?);
        self.with(move |c| {
            c.execute(
                "INSERT INTO restart_streaks (vm, streak) VALUES (?1, ?2) ON CONFLICT(vm) DO UPDATE SET streak = ?2",
                params![name, body],
            )?;
            Ok(())
        })
        .await
    }

    /// The saved streak; none saved is an empty one.
    pub async fn load_streak(&self, name: &str) -> Result<crate::state::streak::Streak, StoreError> {
        let name = name.to_string();
        let body: Option<String> = self
            .with(move |c| {
                let mut stmt = c.prepare("SELECT streak FROM restart_streaks WHERE vm = ?1")?;
                let mut rows = stmt.query(params![name])?;
                Ok(match rows.next()? {
                    Some(r) => Some(r.get(0)?),
                    None => None,
                })
            })
            .await?;
        Ok(match body {
            Some(b) => serde_json::from_str(&b)?,
            None => Default::default(),
        })
    }

    pub async fn load_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT spec, desired, phase, generation, provisional FROM vms ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, bool>(4)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (spec, desired, phase, generation, provisional) = row?;
                out.push(VmRecord {
                    spec: serde_json::from_str(&spec)?,
                    desired: Desired::parse(&desired),
                    phase: serde_json::from_str(&phase)?,
                    generation: generation as u64,
                    provisional,
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn vm_exists(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |c| Ok(c.query_row("SELECT 1 FROM vms WHERE name = ?1", params![name], |_| Ok(())).optional()?.is_some()))
            .await
    }

    /// Records a run; returns its id for `end_run`.
    pub async fn record_run(&self, run: &RunRecord) -> Result<i64, StoreError> {
        let run = run.clone();
        let paths = serde_json::to_string(&run.paths)?;
        self.with(move |c| {
            c.execute(
                "INSERT INTO runs (vm, pid, start_time, boot_id, paths, started_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![run.vm, run.pid, run.start_time as i64, run.boot_id, paths, now_ms()],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    pub async fn end_run(&self, id: i64, exit: &crate::state::phase::ExitInfo) -> Result<(), StoreError> {
        let exit = serde_json::to_string(exit)?;
        self.with(move |c| {
            c.execute("UPDATE runs SET ended_ms = ?2, exit = ?3 WHERE id = ?1", params![id, now_ms(), exit])?;
            Ok(())
        })
        .await
    }

    /// The run that has not ended yet, if any.
    pub async fn open_run(&self, vm: &str) -> Result<Option<(i64, RunRecord)>, StoreError> {
        let vm = vm.to_string();
        self.with(move |c| {
            let row = c
                .query_row(
                    "SELECT id, pid, start_time, boot_id, paths FROM runs WHERE vm = ?1 AND ended_ms IS NULL ORDER BY id DESC LIMIT 1",
                    params![vm],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i32>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?)),
                )
                .optional()?;
            match row {
                None => Ok(None),
                Some((id, pid, start_time, boot_id, paths)) => Ok(Some((
                    id,
                    RunRecord { vm, pid, start_time: start_time as u64, boot_id, paths: serde_json::from_str(&paths)? },
                ))),
            }
        })
        .await
    }

    /// The VM's lease index, allocating the lowest free one below
    /// `capacity` if it has none. None: the pool is exhausted.
    pub async fn allocate_lease(&self, vm: &str, capacity: u32) -> Result<Option<u32>, StoreError> {
        self.allocate_index("leases", vm, capacity).await
    }

    /// The VM's identity index (its uid's offset in the range), allocated
    /// like a lease; freed with the VM.
    pub async fn allocate_identity(&self, vm: &str, capacity: u32) -> Result<Option<u32>, StoreError> {
        self.allocate_index("identities", vm, capacity).await
    }

    /// The lowest free `idx` of `table` below `capacity` for `vm`, or the
    /// one it has. `table` is one of ours, never input.
    async fn allocate_index(&self, table: &'static str, vm: &str, capacity: u32) -> Result<Option<u32>, StoreError> {
        let vm = vm.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            if let Some(idx) = tx.query_row(&format!("SELECT idx FROM {table} WHERE vm = ?1"), params![vm], |r| r.get::<_, u32>(0)).optional()? {
                return Ok(Some(idx));
            }
            // The lowest free index: 0, or the first used one whose
            // successor is free (both lookups use idx's UNIQUE index, so
            // SQLite does the walk without handing us every row).
            let next: u32 = tx.query_row(
                &format!(
                    "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM {table} WHERE idx = 0) THEN 0 \
                     ELSE (SELECT MIN(a.idx) + 1 FROM {table} a WHERE NOT EXISTS (SELECT 1 FROM {table} b WHERE b.idx = a.idx + 1)) END"
                ),
                [],
                |r| r.get(0),
            )?;
            if next >= capacity {
                return Ok(None);
            }
            if table == "leases" {
                tx.execute("INSERT INTO leases (vm, idx, created_ms) VALUES (?1, ?2, ?3)", params![vm, next, now_ms()])?;
            } else {
                tx.execute(&format!("INSERT INTO {table} (vm, idx) VALUES (?1, ?2)"), params![vm, next])?;
            }
            tx.commit()?;
            Ok(Some(next))
        })
        .await
    }

    /// Deletes the VM's lease row; true if there was one.
    pub async fn release_lease(&self, vm: &str) -> Result<bool, StoreError> {
        let vm = vm.to_string();
        self.with(move |c| Ok(c.execute("DELETE FROM leases WHERE vm = ?1", params![vm])? > 0)).await
    }

    /// One VM's lease index with its spec (one row; `leases` reads them all).
    pub async fn lease(&self, vm: &str) -> Result<Option<(u32, Option<VmSpec>)>, StoreError> {
        let vm = vm.to_string();
        self.with(move |c| {
            let row = c
                .query_row("SELECT l.idx, v.spec FROM leases l LEFT JOIN vms v ON v.name = l.vm WHERE l.vm = ?1", params![vm], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, Option<String>>(1)?))
                })
                .optional()?;
            Ok(match row {
                Some((idx, Some(s))) => Some((idx, Some(serde_json::from_str(&s)?))),
                Some((idx, None)) => Some((idx, None)),
                None => None,
            })
        })
        .await
    }

    /// Every lease with its VM's spec (None: the VM row is gone).
    pub async fn leases(&self) -> Result<Vec<(String, u32, Option<VmSpec>)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT l.vm, l.idx, v.spec FROM leases l LEFT JOIN vms v ON v.name = l.vm ORDER BY l.idx")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, Option<String>>(2)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (vm, idx, spec) = row?;
                let spec = match spec {
                    Some(s) => Some(serde_json::from_str(&s)?),
                    None => None,
                };
                out.push((vm, idx, spec));
            }
            Ok(out)
        })
        .await
    }

    /// Writes a row change and its event in one transaction (one fsync
    /// where there were two); returns the event's sequence number.
    pub async fn write_with_event(&self, change: RowChange, ev: &Event) -> Result<u64, StoreError> {
        let body = serde_json::to_string(ev)?;
        let (vm, ts) = (ev.vm.clone(), ev.ts_ms);
        let change = match change {
            RowChange::VmInserted { spec, phase } => (spec.name.clone(), Some(serde_json::to_string(&spec)?), serde_json::to_string(&phase)?, 0, false),
            RowChange::Phase { name, phase, generation, confirm } => (name, None, serde_json::to_string(&phase)?, generation, confirm),
        };
        self.with(move |c| {
            let tx = c.transaction()?;
            let (name, spec, phase, generation, confirm) = change;
            match spec {
                Some(spec) => {
                    // Desired `running` at once: a created VM is started
                    // next (Registry::create), and the start's own write of
                    // it then changes nothing and costs no fsync.
                    tx.execute(
                        "INSERT INTO vms (name, spec, desired, phase, generation, provisional, created_ms) VALUES (?1, ?2, 'running', ?3, 0, 1, ?4)",
                        params![name, spec, phase, now_ms()],
                    )?;
                }
                None => {
                    tx.execute("UPDATE vms SET phase = ?2, generation = ?3 WHERE name = ?1", params![name, phase, generation as i64])?;
                    if confirm {
                        tx.execute("UPDATE vms SET provisional = 0 WHERE name = ?1", params![name])?;
                    }
                }
            }
            tx.execute("INSERT INTO events (ts_ms, vm, body) VALUES (?1, ?2, ?3)", params![ts as i64, vm, body])?;
            let seq = tx.last_insert_rowid() as u64;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    /// Appends an event and returns its sequence number.
    pub async fn append_event(&self, ev: &Event) -> Result<u64, StoreError> {
        let body = serde_json::to_string(ev)?;
        let vm = ev.vm.clone();
        let ts = ev.ts_ms;
        self.with(move |c| {
            c.execute("INSERT INTO events (ts_ms, vm, body) VALUES (?1, ?2, ?3)", params![ts as i64, vm, body])?;
            Ok(c.last_insert_rowid() as u64)
        })
        .await
    }

    /// Deletes events beyond `keep.max_count` (oldest first) and older than
    /// `keep.max_age`; returns how many went. Works in chunks, each its own
    /// short transaction, so a large first trim never holds the database
    /// for long.
    pub async fn prune_events(&self, keep: crate::bounds::EventRetention) -> Result<u64, StoreError> {
        const CHUNK: i64 = 10_000;
        let max_count = i64::try_from(keep.max_count.max(1)).unwrap_or(i64::MAX);
        let cutoff_ms = now_ms().saturating_sub(keep.max_age.as_millis().try_into().unwrap_or(u64::MAX));
        // Everything with a seq below `first_kept` goes: the newest
        // `max_count` rows survive the count rule; timestamps grow with seq,
        // so the first young-enough row bounds the age rule.
        let first_kept = self
            .with(move |c| {
                let by_count: Option<i64> = c
                    .query_row("SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?1", params![max_count.saturating_sub(1)], |r| r.get(0))
                    .optional()?;
                let by_age: Option<i64> = c
                    .query_row("SELECT seq FROM events WHERE ts_ms >= ?1 ORDER BY seq LIMIT 1", params![cutoff_ms as i64], |r| r.get(0))
                    .optional()?;
                let newest: i64 = c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
                // No young row at all: every row is too old.
                let by_age = by_age.unwrap_or(newest + 1);
                Ok(by_count.map_or(by_age, |b| b.max(by_age)))
            })
            .await?;
        let mut deleted = 0u64;
        loop {
            let n = self
                .with(move |c| {
                    Ok(c.execute(
                        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq < ?1 ORDER BY seq LIMIT ?2)",
                        params![first_kept, CHUNK],
                    )?)
                })
                .await?;
            deleted += n as u64;
            if (n as i64) < CHUNK {
                return Ok(deleted);
            }
        }
    }

    /// How many events the database holds.
    pub async fn event_count(&self) -> Result<u64, StoreError> {
        self.with(|c| Ok(c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)).await
    }

    /// Events after `since` as NDJSON lines (oldest first, at most
    /// `limit`), with the seq of the last one. Replays send the stored JSON
    /// as it is, with its sequence number filled in, instead of decoding
    /// and encoding every event.
    pub async fn event_lines_since(&self, since: u64, limit: u32) -> Result<(Vec<u8>, Option<u64>), StoreError> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached("SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let mut rows = stmt.query(params![since as i64, limit])?;
            let mut out = Vec::new();
            let mut last = None;
            while let Some(row) = rows.next()? {
                let seq = row.get::<_, i64>(0)? as u64;
                let body = row.get_ref(1)?.as_str().map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e)))?;
                // Stored with seq 0 first (the field order of `Event`).
                match body.strip_prefix(r#"{"seq":0,"#) {
                    Some(rest) => {
                        out.extend_from_slice(format!(r#"{{"seq":{seq},"#).as_bytes());
                        out.extend_from_slice(rest.as_bytes());
                    }
                    None => {
                        let mut ev: Event = serde_json::from_str(body)?;
                        ev.seq = seq;
                        serde_json::to_writer(&mut out, &ev)?;
                    }
                }
                out.push(b'\n');
                last = Some(seq);
            }
            Ok((out, last))
        })
        .await
    }

    /// Events after `since`, oldest first, at most `limit`.
    pub async fn events_since(&self, since: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = stmt.query_map(params![since as i64, limit], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, body) = row?;
                let mut ev: Event = serde_json::from_str(&body)?;
                ev.seq = seq as u64;
                out.push(ev);
            }
            Ok(out)
        })
        .await
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> VmSpec {
        serde_json::from_value(serde_json::json!({"name": name, "boot": {"kernel": "/k"}})).unwrap()
    }

    #[tokio::test]
    async fn the_instance_id_is_made_once_per_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let first = Store::open(&path).unwrap().instance_id().await.unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(Store::open(&path).unwrap().instance_id().await.unwrap(), first, "a reopened store keeps its identity");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(Store::open(&other.path().join("state.db")).unwrap().instance_id().await.unwrap(), first);
    }

    #[tokio::test]
    async fn a_row_change_and_its_event_are_written_together_or_not_at_all() {
        use crate::events::EventKind;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let ev = |vm: &str, kind| Event { seq: 0, ts_ms: 1, vm: vm.into(), kind, generation: 0, message: None };
        let insert = RowChange::VmInserted { spec: spec("a"), phase: VmPhase::Defined };
        s.write_with_event(insert.clone(), &ev("a", EventKind::Created)).await.unwrap();
        assert_eq!(s.event_count().await.unwrap(), 1);
        // A second insert of the name fails: its event must not stay.
        assert!(s.write_with_event(insert, &ev("a", EventKind::Created)).await.is_err());
        assert_eq!(s.event_count().await.unwrap(), 1, "the failed change left its event");
        let phase = RowChange::Phase { name: "a".into(), phase: VmPhase::Running, generation: 2, confirm: true };
        s.write_with_event(phase, &ev("a", EventKind::Phase { phase: VmPhase::Running })).await.unwrap();
        let rows = s.load_vms().await.unwrap();
        assert_eq!((rows[0].phase.clone(), rows[0].generation, rows[0].provisional), (VmPhase::Running, 2, false));
        assert_eq!(rows[0].desired, Desired::Running, "a created VM is to run");
        assert_eq!(s.event_count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn vm_rows_round_trip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        s.insert_vm(&spec("a"), &VmPhase::Defined).await.unwrap();
        assert!(s.insert_vm(&spec("a"), &VmPhase::Defined).await.is_err(), "duplicate name must fail");
        s.set_phase("a", &VmPhase::Running, 3).await.unwrap();
        s.set_desired("a", Desired::Running).await.unwrap();
        let rows = s.load_vms().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].phase.clone(), rows[0].generation, rows[0].desired), (VmPhase::Running, 3, Desired::Running));
        assert!(rows[0].provisional);
        s.confirm("a").await.unwrap();
        assert!(!s.load_vms().await.unwrap()[0].provisional);
        s.delete_vm("a").await.unwrap();
        assert!(s.load_vms().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_restart_streak_is_kept_and_goes_with_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        s.insert_vm(&spec("a"), &VmPhase::Defined).await.unwrap();
        assert_eq!(s.load_streak("a").await.unwrap(), Default::default());
        let streak = crate::state::streak::Streak { count: 2, recent: vec![1, 2] };
        s.save_streak("a", &streak).await.unwrap();
        drop(s);
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(s.load_streak("a").await.unwrap(), streak);
        s.delete_vm("a").await.unwrap();
        assert_eq!(s.load_streak("a").await.unwrap(), Default::default());
    }

    #[tokio::test]
    async fn reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Store::open(&path).unwrap().insert_vm(&spec("b"), &VmPhase::Defined).await.unwrap();
        assert!(Store::open(&path).unwrap().vm_exists("b").await.unwrap());
    }

    #[tokio::test]
    async fn leases_take_the_lowest_free_index_and_are_released_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(s.allocate_lease("a", 3).await.unwrap(), Some(0));
        assert_eq!(s.allocate_lease("b", 3).await.unwrap(), Some(1));
        assert_eq!(s.allocate_lease("a", 3).await.unwrap(), Some(0), "idempotent");
        assert!(s.release_lease("a").await.unwrap());
        assert!(!s.release_lease("a").await.unwrap());
        assert_eq!(s.allocate_lease("c", 3).await.unwrap(), Some(0), "reuses the gap");
        assert_eq!(s.allocate_lease("d", 3).await.unwrap(), Some(2));
        assert_eq!(s.allocate_lease("e", 3).await.unwrap(), None, "exhausted");
        assert_eq!(s.leases().await.unwrap().len(), 3);
    }

    fn note(ts_ms: u64) -> Event {
        Event { seq: 0, ts_ms, vm: "v".into(), kind: crate::events::EventKind::Note, generation: 0, message: None }
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        for _ in 0..25 {
            s.append_event(&note(now_ms())).await.unwrap();
        }
        let keep = crate::bounds::EventRetention { max_count: 10, max_age: std::time::Duration::from_secs(3600) };
        assert_eq!(s.prune_events(keep).await.unwrap(), 15);
        assert_eq!(s.event_count().await.unwrap(), 10);
        let left = s.events_since(0, 100).await.unwrap();
        let (lines, last) = s.event_lines_since(15, 100).await.unwrap();
        let parsed: Vec<Event> = lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(parsed, left, "the fast path gives the same events");
        assert_eq!(last, Some(25));
        assert_eq!(left.first().map(|e| e.seq), Some(16), "the oldest go first");
        assert_eq!(s.prune_events(keep).await.unwrap(), 0, "idempotent");
    }

    #[tokio::test]
    async fn retention_drops_events_older_than_the_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let day = 24 * 3600 * 1000;
        for ts in [now_ms() - 40 * day, now_ms() - 31 * day, now_ms() - 29 * day, now_ms()] {
            s.append_event(&note(ts)).await.unwrap();
        }
        let keep = crate::bounds::EventRetention::default();
        assert_eq!(s.prune_events(keep).await.unwrap(), 2);
        assert_eq!(s.event_count().await.unwrap(), 2);
        let all_old = crate::bounds::EventRetention { max_count: 100, max_age: std::time::Duration::ZERO };
        s.append_event(&note(now_ms() - 1000)).await.unwrap();
        assert_eq!(s.prune_events(all_old).await.unwrap(), 3);
        assert_eq!(s.event_count().await.unwrap(), 0);
    }

    #[test]
    fn garbage_file_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. } | StoreError::Open { .. }), "{err}");
        assert!(err.to_string().contains("state.db"), "{err}");
    }
}
