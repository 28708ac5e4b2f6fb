//! The event hub behind `/1.0/events`: operation and lifecycle events fan out to every
//! listener. Slow listeners lose old events rather than slowing the daemon down.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: String,
    pub timestamp: DateTime<Utc>,
    pub metadata: serde_json::Value,
    pub location: String,
    pub project: String,
}

#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Event>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> EventHub {
        let (tx, _) = broadcast::channel(1024);
        EventHub { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn send(&self, event_type: &str, metadata: serde_json::Value) {
        // No listener is not an error: events are best-effort notifications.
        let _ = self.tx.send(Event {
            event_type: event_type.to_string(),
            timestamp: Utc::now(),
            metadata,
            location: "none".into(),
            project: "default".into(),
        });
    }

    /// A lifecycle event as Incus sends them (`instance-started`, `image-created`, …).
    pub fn lifecycle(&self, action: &str, source: &str, context: serde_json::Value) {
        self.send(
            "lifecycle",
            serde_json::json!({
                "action": action,
                "source": source,
                "context": context,
                "requestor": null,
            }),
        );
    }
}
