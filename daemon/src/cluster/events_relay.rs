//! Every member's events on every member's `/1.0/events`.
//!
//! Incus clients wait for their operations through `/1.0/events` on the member they talk
//! to, while the operation may run on another member. So each member serves the events
//! that happened on it at `GET /internal/cluster/events` (newline-delimited JSON, one
//! event per line, an empty line as keep-alive), and keeps one relay per peer that reads
//! that stream and republishes the events locally as remote ones, keeping their
//! `location`. Only local events are served, so an event never travels back to where it
//! came from, whatever the topology.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::peer::{PeerClient, PeerError};
use crate::events::{Event, EventHub, STANDALONE_LOCATION};

/// Where a member serves its local events to its peers.
pub const EVENTS_PATH: &str = "/internal/cluster/events";
/// How often the stream says it is alive when there is nothing to say.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// A stream silent for this long (three keep-alives missed) is from a dead member.
const IDLE_LIMIT: Duration = Duration::from_secs(15);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// No event comes near this; a longer line means the stream is not what we think it is.
const MAX_LINE: usize = 16 << 20;

/// This member's own events as the lines of the stream served at [`EVENTS_PATH`], as they
/// happen, until the daemon shuts down (`shutdown` turns true or its sender is dropped).
/// The HTTP answer around it is `api/cluster.rs`'s.
pub fn local_event_lines(
    hub: &EventHub,
    shutdown: watch::Receiver<bool>,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let stream = LocalStream {
        // Subscribed now, before the answer is sent, so nothing between is missed.
        rx: hub.subscribe_local(),
        shutdown: Box::pin(async move {
            let mut shutdown = shutdown;
            // A dropped sender means the daemon is gone: the stream ends as well.
            let _ = shutdown.wait_for(|stop| *stop).await;
        }),
        keepalive: {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + KEEPALIVE_INTERVAL,
                KEEPALIVE_INTERVAL,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        },
    };
    futures::stream::unfold(stream, |mut s| async move {
        s.next_line().await.map(|line| (line, s))
    })
}

struct LocalStream {
    rx: broadcast::Receiver<Event>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    keepalive: tokio::time::Interval,
}

impl LocalStream {
    /// The next line to send, or None when the stream is over.
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                _ = &mut self.shutdown => return None,
                event = self.rx.recv() => match event {
                    Ok(event) => match serde_json::to_vec(&event) {
                        Ok(mut line) => {
                            line.push(b'\n');
                            return Some(Bytes::from(line));
                        }
                        Err(e) => tracing::warn!("encoding an event for a peer: {e}"),
                    },
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("a peer's event stream fell behind: {n} events not relayed")
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.keepalive.tick() => return Some(Bytes::from_static(b"\n")),
            }
        }
    }
}

/// Why a relay lost (or never had) a peer's event stream.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("{0}")]
    Connect(#[from] PeerError),
    #[error("the member answered {status}")]
    Refused { status: StatusCode },
    #[error("reading the stream: {0}")]
    Read(String),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("the member ended the stream")]
    Ended,
    #[error("a line longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// One relay task per peer, each republishing that peer's events into the local hub.
/// Dropping it stops them all.
pub struct EventRelays {
    peer: PeerClient,
    hub: EventHub,
    relays: Mutex<HashMap<(String, String), JoinHandle<()>>>,
}

impl EventRelays {
    pub fn new(peer: PeerClient, hub: EventHub) -> EventRelays {
        EventRelays {
            peer,
            hub,
            relays: Mutex::new(HashMap::new()),
        }
    }

    /// Relays from exactly these peers, `(name, address)`: starts what is missing, stops
    /// what is no longer listed. Must be called within the tokio runtime.
    pub fn set_peers(&self, peers: Vec<(String, String)>) {
        let wanted: HashSet<(String, String)> = peers.into_iter().collect();
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        relays.retain(|peer, task| {
            let keep = wanted.contains(peer) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, addr) in wanted {
            if relays.contains_key(&(name.clone(), addr.clone())) {
                continue;
            }
            let task = tokio::spawn(relay(
                self.peer.clone(),
                self.hub.clone(),
                name.clone(),
                addr.clone(),
            ));
            relays.insert((name, addr), task);
        }
    }

    /// The peers relayed from, sorted.
    pub fn peers(&self) -> Vec<(String, String)> {
        let relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        let mut peers: Vec<_> = relays.keys().cloned().collect();
        peers.sort();
        peers
    }

    /// Stops every relay.
    pub fn shutdown(&self) {
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        for (_, task) in relays.drain() {
            task.abort();
        }
    }
}

impl Drop for EventRelays {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Relays one peer's events for as long as the task lives, reconnecting with back-off.
async fn relay(peer: PeerClient, hub: EventHub, name: String, addr: String) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    loop {
        let mut connected = false;
        let err = match relay_once(&peer, &hub, &name, &addr, &mut connected).await {
            Ok(never) => match never {},
            Err(e) => e,
        };
        if connected {
            backoff = MIN_BACKOFF;
            failures = 0;
            tracing::warn!("lost the event stream of cluster member {name} ({addr}): {err}");
        } else {
            failures += 1;
            // An outage is worth one warning, not one per retry.
            if failures == 1 {
                tracing::warn!("relaying events of cluster member {name} ({addr}): {err}");
            } else {
                tracing::debug!("relaying events of cluster member {name} ({addr}): {err}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads the peer's stream until it fails.
async fn relay_once(
    peer: &PeerClient,
    hub: &EventHub,
    name: &str,
    addr: &str,
    connected: &mut bool,
) -> Result<std::convert::Infallible, RelayError> {
    let req = Request::get(EVENTS_PATH)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| RelayError::Read(e.to_string()))?;
    let resp = tokio::time::timeout(IDLE_LIMIT, peer.request(addr, req))
        .await
        .map_err(|_| RelayError::Idle(IDLE_LIMIT))??;
    if resp.status() != StatusCode::OK {
        return Err(RelayError::Refused {
            status: resp.status(),
        });
    }
    *connected = true;
    tracing::info!("relaying events of cluster member {name} ({addr})");
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(IDLE_LIMIT, body.frame()).await {
            Err(_) => return Err(RelayError::Idle(IDLE_LIMIT)),
            Ok(None) => return Err(RelayError::Ended),
            Ok(Some(Err(e))) => return Err(RelayError::Read(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(end + 1);
            publish_line(hub, name, &line[..end]);
        }
        if buf.len() > MAX_LINE {
            return Err(RelayError::LineTooLong);
        }
    }
}

fn publish_line(hub: &EventHub, name: &str, line: &[u8]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return; // keep-alive
    }
    match serde_json::from_slice::<Event>(line) {
        Ok(mut event) => {
            // A member that has not been told its name yet still says where it is.
            if event.location.is_empty() || event.location == STANDALONE_LOCATION {
                event.location = name.to_string();
            }
            hub.publish_remote(event);
        }
        Err(e) => tracing::warn!("an unreadable event from cluster member {name}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_support::{cluster_cert, TlsServer};
    use crate::tls::cert::ServerCert;
    use axum::routing::get;
    use axum::Router;

    struct Member {
        hub: EventHub,
        server: TlsServer,
        stop: watch::Sender<bool>,
    }

    fn router(hub: &EventHub, stop: &watch::Sender<bool>) -> Router {
        let (hub, stop) = (hub.clone(), stop.clone());
        Router::new().route(
            EVENTS_PATH,
            get(move || {
                let lines = local_event_lines(&hub, stop.subscribe());
                let response = axum::body::Body::from_stream(futures::StreamExt::map(
                    lines,
                    Ok::<_, std::convert::Infallible>,
                ));
                async move { response }
            }),
        )
    }

    async fn member(name: &str, cert: &ServerCert) -> Member {
        let hub = EventHub::new();
        hub.set_location(name);
        let (stop, _) = watch::channel(false);
        let server = TlsServer::start(router(&hub, &stop), cert, Some(cert.der().clone())).await;
        Member { hub, server, stop }
    }

    /// The next event on `rx` that `pred` picks, if one comes within `within`.
    async fn next_matching(
        rx: &mut broadcast::Receiver<Event>,
        within: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Option<Event> {
        tokio::time::timeout(within, async {
            loop {
                match rx.recv().await {
                    Ok(event) if pred(&event) => return event,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => panic!("hub closed"),
                }
            }
        })
        .await
        .ok()
    }

    /// Sends pings from `from` until one shows up on `to`: the relay is (re)connected.
    async fn until_relayed(from: &EventHub, to: &mut broadcast::Receiver<Event>) {
        for i in 0..100 {
            let marker = format!("ping-{i}-{}", uuid::Uuid::new_v4());
            from.send("ping", serde_json::json!({ "marker": marker }));
            if next_matching(to, Duration::from_millis(100), |e| {
                e.metadata["marker"] == marker
            })
            .await
            .is_some()
            {
                return;
            }
        }
        panic!("no event relayed within 10 s");
    }

    fn relays_to(hub: &EventHub, pem: &str, key: &str) -> EventRelays {
        EventRelays::new(PeerClient::new(pem, key).unwrap(), hub.clone())
    }

    #[tokio::test]
    async fn a_members_events_show_on_its_peer_with_its_location() {
        let (cert, pem, key) = cluster_cert();
        let a = member("a", &cert).await;
        let b_hub = EventHub::new();
        b_hub.set_location("b");
        let mut b_all = b_hub.subscribe();
        let mut b_local = b_hub.subscribe_local();
        let relays = relays_to(&b_hub, &pem, &key);
        relays.set_peers(vec![("a".into(), a.server.addr.clone())]);
        assert_eq!(relays.peers(), [("a".to_string(), a.server.addr.clone())]);

        until_relayed(&a.hub, &mut b_all).await;
        a.hub.lifecycle(
            "instance-started",
            "/1.0/instances/c1",
            serde_json::json!({}),
        );
        let event = next_matching(&mut b_all, Duration::from_secs(5), |e| {
            e.event_type == "lifecycle"
        })
        .await
        .expect("A's lifecycle event on B");
        assert_eq!(event.location, "a");
        assert_eq!(event.metadata["action"], "instance-started");

        // B's own stream (what B serves its peers) has none of A's events.
        b_hub.send("operation", serde_json::json!({"id": "b-op"}));
        let first = b_local.recv().await.unwrap();
        assert_eq!(
            (first.location.as_str(), &first.metadata["id"]),
            ("b", &serde_json::json!("b-op"))
        );

        // No longer listed: no longer relayed.
        relays.set_peers(vec![]);
        assert!(relays.peers().is_empty());
        tokio::task::yield_now().await;
        a.hub.send("operation", serde_json::json!({"id": "after"}));
        let late = next_matching(&mut b_all, Duration::from_millis(300), |e| {
            e.metadata["id"] == "after"
        })
        .await;
        assert!(late.is_none(), "{late:?}");
    }

    #[tokio::test]
    async fn two_members_relaying_each_other_never_echo() {
        let (cert, pem, key) = cluster_cert();
        let a = member("a", &cert).await;
        let b = member("b", &cert).await;
        let (mut a_all, mut b_all) = (a.hub.subscribe(), b.hub.subscribe());
        let a_relays = relays_to(&a.hub, &pem, &key);
        a_relays.set_peers(vec![("b".into(), b.server.addr.clone())]);
        let b_relays = relays_to(&b.hub, &pem, &key);
        b_relays.set_peers(vec![("a".into(), a.server.addr.clone())]);
        until_relayed(&a.hub, &mut b_all).await;
        until_relayed(&b.hub, &mut a_all).await;

        a.hub.send("operation", serde_json::json!({"id": "x"}));
        let is_x = |e: &Event| e.metadata["id"] == "x";
        let on_b = next_matching(&mut b_all, Duration::from_secs(5), is_x).await;
        assert_eq!(on_b.expect("x on B").location, "a");
        let on_a = next_matching(&mut a_all, Duration::from_secs(5), is_x).await;
        assert_eq!(on_a.expect("x on A").location, "a");
        let echo = next_matching(&mut a_all, Duration::from_millis(500), is_x).await;
        assert!(echo.is_none(), "x came back to A: {echo:?}");
    }

    #[tokio::test]
    async fn the_relay_reconnects_after_the_member_restarts() {
        let (cert, pem, key) = cluster_cert();
        let mut a = member("a", &cert).await;
        let b_hub = EventHub::new();
        let mut b_all = b_hub.subscribe();
        let relays = relays_to(&b_hub, &pem, &key);
        relays.set_peers(vec![("a".into(), a.server.addr.clone())]);
        until_relayed(&a.hub, &mut b_all).await;

        a.server.stop().await;
        let restarted = TlsServer::start_at(
            &a.server.addr,
            router(&a.hub, &a.stop),
            &cert,
            Some(cert.der().clone()),
        )
        .await;
        until_relayed(&a.hub, &mut b_all).await;
        assert!(restarted.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);

        // Dropping the relays stops them.
        drop(relays);
        tokio::task::yield_now().await;
        a.hub
            .send("operation", serde_json::json!({"id": "after-drop"}));
        let late = next_matching(&mut b_all, Duration::from_millis(300), |e| {
            e.metadata["id"] == "after-drop"
        })
        .await;
        assert!(late.is_none(), "{late:?}");
    }

    #[test]
    fn a_line_from_an_unnamed_member_takes_the_peers_name() {
        let hub = EventHub::new();
        let mut rx = hub.subscribe();
        let line = br#"{"type":"operation","timestamp":"2024-01-01T00:00:00Z","metadata":{},"location":"none","project":"default"}"#;
        publish_line(&hub, "n3", line);
        publish_line(&hub, "n3", b"  ");
        publish_line(&hub, "n3", b"{not json");
        assert_eq!(rx.try_recv().unwrap().location, "n3");
        assert!(rx.try_recv().is_err());
    }
}
