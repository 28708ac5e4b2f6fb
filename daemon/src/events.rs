//! The event hub behind `/1.0/events`: operation and lifecycle events fan out to every
//! listener. Slow listeners lose old events rather than slowing the daemon down.
//!
//! In a cluster each member's `/1.0/events` also shows what happens on the other members
//! (an `incus exec` talking to one member waits for an operation running on another), so
//! the hub carries two kinds of events: local ones, stamped with this member's name as
//! their `location`, and remote ones relayed from a peer, which keep theirs. Peers are
//! served only the local ones ([`EventHub::subscribe_local`]), so an event is never
//! relayed back to where it came from.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What Incus calls the location of a server that is not clustered.
pub const STANDALONE_LOCATION: &str = "none";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: String,
    pub timestamp: DateTime<Utc>,
    pub metadata: serde_json::Value,
    /// The name of the member the event happened on (`none` when not clustered).
    pub location: String,
    pub project: String,
}

#[derive(Clone)]
pub struct EventHub {
    /// Every event, local and relayed: what `/1.0/events` listeners see.
    all: broadcast::Sender<Event>,
    /// Only the events that happened here: what peers are served.
    local: broadcast::Sender<Event>,
    location: Arc<RwLock<String>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> EventHub {
        let (all, _) = broadcast::channel(1024);
        let (local, _) = broadcast::channel(1024);
        EventHub {
            all,
            local,
            location: Arc::new(RwLock::new(STANDALONE_LOCATION.to_string())),
        }
    }

    /// Names this member in the `location` of the events it sends from now on.
    pub fn set_location(&self, name: &str) {
        *self.location.write().unwrap_or_else(|p| p.into_inner()) = name.to_string();
    }

    pub fn location(&self) -> String {
        self.location
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every event, wherever it happened.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.all.subscribe()
    }

    /// Only the events that happened on this member.
    pub fn subscribe_local(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    pub fn send(&self, event_type: &str, metadata: serde_json::Value) {
        let event = Event {
            event_type: event_type.to_string(),
            timestamp: Utc::now(),
            metadata,
            location: self.location(),
            project: "default".into(),
        };
        // No listener is not an error: events are best-effort notifications.
        let _ = self.local.send(event.clone());
        let _ = self.all.send(event);
    }

    /// An event relayed from another member: shown to local listeners, never served to
    /// peers.
    pub fn publish_remote(&self, event: Event) {
        let _ = self.all.send(event);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::broadcast::error::TryRecvError;

    #[test]
    fn a_standalone_hub_stamps_none_and_a_member_its_name() {
        let hub = EventHub::new();
        let mut rx = hub.subscribe();
        hub.send("operation", serde_json::json!({"id": "1"}));
        hub.set_location("node2");
        hub.send("operation", serde_json::json!({"id": "2"}));
        assert_eq!(rx.try_recv().unwrap().location, "none");
        assert_eq!(rx.try_recv().unwrap().location, "node2");
    }

    #[test]
    fn remote_events_reach_listeners_but_not_the_local_stream() {
        let hub = EventHub::new();
        hub.set_location("node1");
        let mut all = hub.subscribe();
        let mut local = hub.subscribe_local();
        let mut remote = Event {
            event_type: "operation".into(),
            timestamp: Utc::now(),
            metadata: serde_json::json!({"id": "r"}),
            location: "node2".into(),
            project: "default".into(),
        };
        hub.publish_remote(remote.clone());
        hub.send("operation", serde_json::json!({"id": "l"}));

        assert_eq!(all.try_recv().unwrap(), remote);
        assert_eq!(all.try_recv().unwrap().location, "node1");
        let mine = local.try_recv().unwrap();
        assert_eq!(mine.metadata["id"], "l");
        assert!(matches!(local.try_recv(), Err(TryRecvError::Empty)));

        // The wire form is Incus's, and it reads back unchanged.
        remote.metadata = serde_json::json!({"nested": [1, 2]});
        let text = serde_json::to_string(&remote).unwrap();
        assert!(text.contains(r#""type":"operation""#), "{text}");
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), remote);
    }
}
