//! `/1.0/events`: a websocket that streams operation and lifecycle events as JSON text
//! messages, filtered by `?type=operation,lifecycle`.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;

#[derive(Deserialize, Default)]
pub struct EventsQuery {
    #[serde(rename = "type", default)]
    types: Option<String>,
}

pub async fn events(
    State(d): State<AppState>,
    Query(q): Query<EventsQuery>,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    let types: Vec<String> = q
        .types
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    // Subscribe before the upgrade completes: the Go client sends its request right after,
    // and must not miss the operation it is about to create.
    let rx = d.events.subscribe();
    let mut shutdown = d.shutdown.subscribe();
    ws.on_upgrade(move |socket| async move {
        tokio::select! {
            _ = pump(socket, rx, types) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    })
}

async fn pump(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<crate::events::Event>,
    types: Vec<String>,
) {
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if !types.is_empty() && !types.contains(&ev.event_type) {
                        continue;
                    }
                    let Ok(text) = serde_json::to_string(&ev) else { continue };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::debug!("event listener lagged by {n}"),
                Err(RecvError::Closed) => return,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
}
