//! The streams of websocket operations (exec): what `/1.0/operations/{id}/websocket`
//! connects to. They are HTTP connections handed from one handler to another, so the
//! registry is the API layer's state ([`AppState`]), not the daemon's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::AppState;

/// Something a websocket operation's clients connect to (`/operations/{id}/websocket`).
pub trait WebsocketTarget: Send + Sync {
    /// Whether `secret` names one of the operation's streams.
    fn check_secret(&self, secret: &str) -> Result<(), String>;
    /// Hands over a connected websocket if `secret` names one of the operation's streams.
    fn connect(&self, secret: &str, ws: axum::extract::ws::WebSocket) -> Result<(), String>;
}

/// The running websocket operations, by operation id.
#[derive(Default)]
pub struct Websockets {
    targets: Mutex<HashMap<String, Arc<dyn WebsocketTarget>>>,
}

impl AppState {
    pub fn register_websocket(&self, op_id: &str, target: Arc<dyn WebsocketTarget>) {
        self.websockets
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(op_id.to_string(), target);
    }

    pub fn unregister_websocket(&self, op_id: &str) {
        self.websockets
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(op_id);
    }

    pub fn websocket_target(&self, op_id: &str) -> Option<Arc<dyn WebsocketTarget>> {
        self.websockets
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(op_id)
            .cloned()
    }
}
