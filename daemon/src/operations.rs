//! Background operations (`/1.0/operations`): what an async API call returns. An operation
//! runs a future on the runtime, reports its state changes as `operation` events, and can be
//! waited on or cancelled. Websocket operations (exec) also hold the secrets their streams
//! connect with.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use crate::events::EventHub;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    Running,
    Success,
    Failure,
    Cancelled,
}

impl OpStatus {
    pub fn name(self) -> &'static str {
        match self {
            OpStatus::Running => "Running",
            OpStatus::Success => "Success",
            OpStatus::Failure => "Failure",
            OpStatus::Cancelled => "Cancelled",
        }
    }
    pub fn code(self) -> u16 {
        match self {
            OpStatus::Running => 103,
            OpStatus::Success => 200,
            OpStatus::Failure => 400,
            OpStatus::Cancelled => 401,
        }
    }
    pub fn is_final(self) -> bool {
        self != OpStatus::Running
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Task,
    Websocket,
    Token,
}

impl OpClass {
    fn name(self) -> &'static str {
        match self {
            OpClass::Task => "task",
            OpClass::Websocket => "websocket",
            OpClass::Token => "token",
        }
    }
}

pub type Resources = BTreeMap<String, Vec<String>>;

/// The operation as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OperationView {
    pub id: String,
    pub class: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status: String,
    pub status_code: u16,
    pub resources: Resources,
    pub metadata: serde_json::Value,
    pub may_cancel: bool,
    pub err: String,
    pub location: String,
}

struct OpState {
    class: OpClass,
    description: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    status: OpStatus,
    resources: Resources,
    metadata: serde_json::Value,
    err: String,
    may_cancel: bool,
}

pub struct Operation {
    pub id: String,
    state: Mutex<OpState>,
    done: watch::Sender<bool>,
    cancel: watch::Sender<bool>,
    events: EventHub,
}

impl Operation {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> OperationView {
        let s = self.lock();
        OperationView {
            id: self.id.clone(),
            class: s.class.name().into(),
            description: s.description.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            status: s.status.name().into(),
            status_code: s.status.code(),
            resources: s.resources.clone(),
            metadata: s.metadata.clone(),
            may_cancel: s.may_cancel,
            err: s.err.clone(),
            location: "none".into(),
        }
    }

    pub fn status(&self) -> OpStatus {
        self.lock().status
    }

    pub fn class(&self) -> OpClass {
        self.lock().class
    }

    /// Whether [`cancel`](Self::cancel) would cancel it now.
    pub fn may_cancel(&self) -> bool {
        let s = self.lock();
        s.may_cancel && !s.status.is_final()
    }

    fn publish(&self) {
        let v = self.view();
        if let Ok(m) = serde_json::to_value(v) {
            self.events.send("operation", m);
        }
    }

    /// Merges keys into the metadata (e.g. an exec's `return` code) and tells listeners.
    pub fn set_metadata(&self, key: &str, value: serde_json::Value) {
        {
            let mut s = self.lock();
            if !s.metadata.is_object() {
                s.metadata = serde_json::json!({});
            }
            if let Some(m) = s.metadata.as_object_mut() {
                m.insert(key.to_string(), value);
            }
            s.updated_at = Utc::now();
        }
        self.publish();
    }

    pub fn remove_metadata(&self, key: &str) {
        let mut s = self.lock();
        if let Some(m) = s.metadata.as_object_mut() {
            m.remove(key);
        }
    }

    pub fn finish(&self, result: Result<(), String>) {
        {
            let mut s = self.lock();
            if s.status.is_final() {
                return;
            }
            match result {
                Ok(()) => s.status = OpStatus::Success,
                Err(e) => {
                    s.status = OpStatus::Failure;
                    s.err = e;
                }
            }
            s.updated_at = Utc::now();
        }
        self.publish();
        // send_replace: the value must change even when nobody is subscribed yet.
        self.done.send_replace(true);
    }

    pub fn cancel(&self) -> bool {
        {
            let mut s = self.lock();
            if s.status.is_final() || !s.may_cancel {
                return false;
            }
            s.status = OpStatus::Cancelled;
            s.err = "Operation cancelled".into();
            s.updated_at = Utc::now();
        }
        self.cancel.send_replace(true);
        self.publish();
        // send_replace: the value must change even when nobody is subscribed yet.
        self.done.send_replace(true);
        true
    }

    /// Resolves when the operation ends, or after `timeout` (None: forever).
    pub async fn wait(&self, timeout: Option<Duration>) {
        let mut rx = self.done.subscribe();
        let wait = async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, wait).await;
            }
            None => wait.await,
        }
    }

    /// A receiver that turns true when the operation is cancelled.
    pub fn cancelled(&self) -> watch::Receiver<bool> {
        self.cancel.subscribe()
    }
}

#[derive(Clone)]
pub struct Operations {
    ops: Arc<Mutex<HashMap<String, Arc<Operation>>>>,
    events: EventHub,
}

/// How long a finished operation stays visible, so clients that poll after the end still
/// find its result.
const KEEP_FINISHED: Duration = Duration::from_secs(60);

pub struct NewOp {
    pub class: OpClass,
    pub description: String,
    pub resources: Resources,
    pub metadata: serde_json::Value,
    pub may_cancel: bool,
}

impl Operations {
    pub fn new(events: EventHub) -> Operations {
        Operations {
            ops: Default::default(),
            events,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Operation>>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a running operation without starting any work: the caller drives it.
    pub fn create(&self, new: NewOp) -> Arc<Operation> {
        self.create_with_id(uuid::Uuid::new_v4().to_string(), new)
    }

    pub fn create_with_id(&self, id: String, new: NewOp) -> Arc<Operation> {
        let now = Utc::now();
        let (done, _) = watch::channel(false);
        let (cancel, _) = watch::channel(false);
        let op = Arc::new(Operation {
            id: id.clone(),
            state: Mutex::new(OpState {
                class: new.class,
                description: new.description,
                created_at: now,
                updated_at: now,
                status: OpStatus::Running,
                resources: new.resources,
                metadata: new.metadata,
                err: String::new(),
                may_cancel: new.may_cancel,
            }),
            done,
            cancel,
            events: self.events.clone(),
        });
        self.map().insert(id.clone(), op.clone());
        op.publish();

        // Forget the operation a while after it ends.
        let ops = self.clone();
        let watched = op.clone();
        tokio::spawn(async move {
            watched.wait(None).await;
            tokio::time::sleep(KEEP_FINISHED).await;
            ops.map().remove(&id);
        });
        op
    }

    /// Starts a task operation running `work`; its error string becomes the operation's.
    pub fn spawn_task<F>(&self, description: &str, resources: Resources, work: F) -> Arc<Operation>
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.spawn_task_with(description, resources, serde_json::json!({}), work)
    }

    /// Like [`spawn_task`](Self::spawn_task), with metadata that is there from the start.
    pub fn spawn_task_with<F>(
        &self,
        description: &str,
        resources: Resources,
        metadata: serde_json::Value,
        work: F,
    ) -> Arc<Operation>
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let op = self.create(NewOp {
            class: OpClass::Task,
            description: description.to_string(),
            resources,
            metadata,
            may_cancel: false,
        });
        let running = op.clone();
        tokio::spawn(async move {
            let r = work.await;
            if let Err(e) = &r {
                tracing::warn!(op = %running.id, "operation failed: {e}");
            }
            running.finish(r);
        });
        op
    }

    pub fn get(&self, id: &str) -> Option<Arc<Operation>> {
        self.map().get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Operation>> {
        self.map().values().cloned().collect()
    }
}

/// `{"instances": ["/1.0/instances/NAME"]}` and friends.
pub fn resources(kind: &str, urls: &[String]) -> Resources {
    let mut r = Resources::new();
    r.insert(kind.to_string(), urls.to_vec());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn task_success_and_failure_are_reported_as_events() {
        let hub = EventHub::new();
        let mut rx = hub.subscribe();
        let ops = Operations::new(hub);
        let ok = ops.spawn_task("ok", Resources::new(), async { Ok(()) });
        ok.wait(Some(Duration::from_secs(5))).await;
        assert_eq!(ok.status(), OpStatus::Success);
        let bad = ops.spawn_task("bad", Resources::new(), async { Err("nope".into()) });
        bad.wait(Some(Duration::from_secs(5))).await;
        assert_eq!(bad.view().err, "nope");
        assert_eq!(bad.view().status_code, 400);

        let mut seen = Vec::new();
        while let Ok(e) = rx.try_recv() {
            seen.push(e.metadata["status"].as_str().unwrap().to_string());
        }
        assert!(seen.contains(&"Success".to_string()));
        assert!(seen.contains(&"Failure".to_string()));
    }

    #[tokio::test]
    async fn only_cancellable_operations_cancel() {
        let ops = Operations::new(EventHub::new());
        let op = ops.create(NewOp {
            class: OpClass::Token,
            description: "token".into(),
            resources: Resources::new(),
            metadata: serde_json::json!({}),
            may_cancel: true,
        });
        assert!(op.cancel());
        assert_eq!(op.status(), OpStatus::Cancelled);
        let task = ops.spawn_task("t", Resources::new(), std::future::pending());
        assert!(!task.cancel());
    }

    #[tokio::test]
    async fn waiting_after_the_end_returns_at_once() {
        // Finished before anyone subscribed: a late waiter must still see the end.
        let ops = Operations::new(EventHub::new());
        let op = ops.create(NewOp {
            class: OpClass::Task,
            description: "t".into(),
            resources: Resources::new(),
            metadata: serde_json::json!({}),
            may_cancel: false,
        });
        op.finish(Err("boom".into()));
        tokio::time::timeout(Duration::from_secs(1), op.wait(None))
            .await
            .expect("wait returns for a finished operation");
    }

    #[tokio::test]
    async fn wait_times_out_on_a_running_operation() {
        let ops = Operations::new(EventHub::new());
        let op = ops.spawn_task("t", Resources::new(), std::future::pending());
        op.wait(Some(Duration::from_millis(20))).await;
        assert_eq!(op.status(), OpStatus::Running);
    }
}
