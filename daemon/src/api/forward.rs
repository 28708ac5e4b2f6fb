//! Forwarding a client's API request to another member, so that the answer looks as if
//! this member had given it: same method, path, query and end-to-end headers; bodies
//! stream both ways (image and file uploads can be large); an HTTP upgrade (exec and
//! console websockets, the SFTP upgrade) is spliced through byte for byte once the other
//! member has switched protocols.
//!
//! Whether a request has to be forwarded, and where, is the caller's decision; the query is
//! passed on unchanged (`target=` included).

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::ApiError;
use crate::cluster::peer::PeerClient;

/// Headers that describe one connection rather than the message (RFC 9110 §7.6.1), plus
/// `Expect`, which this member's server has already answered.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Sends `req` to the member at `addr` and answers with what it answers. A member that
/// cannot be reached gives an Incus error with status 503.
pub async fn forward(peer: &PeerClient, addr: &str, mut req: Request) -> Response {
    // Taken before the request is consumed: it resolves once our 101 has reached the client.
    let client_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, client_upgrade.is_some());
    // The other member's address goes in its place; our extensions are ours.
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::EXPECT);
    parts.extensions = Default::default();

    let mut resp = match peer.request(addr, Request::from_parts(parts, body)).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!("forwarding to cluster member {addr}: {e}");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Failed to reach cluster member: {e}"),
            )
            .into_response();
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            tracing::warn!("cluster member {addr} switched protocols unasked");
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "Cluster member switched protocols without an upgrade request",
            )
            .into_response();
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(splice(client_upgrade, upstream_upgrade, addr.to_string()));
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        parts.extensions = Default::default();
        return Response::from_parts(parts, Body::empty());
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    parts.extensions = Default::default();
    Response::from_parts(parts, Body::new(body))
}

/// Copies bytes both ways between the client's and the member's upgraded connections
/// until either side closes.
async fn splice(client: OnUpgrade, upstream: OnUpgrade, addr: String) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("upgrade forwarded to {addr} did not complete: {e}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!("upgraded stream to {addr} closed ({up} bytes up, {down} down)")
        }
        Err(e) => tracing::debug!("upgraded stream to {addr} ended: {e}"),
    }
}

/// `Connection: upgrade` together with an `Upgrade` header.
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Removes the connection-level headers, those the `Connection` header names included; for
/// an upgrade keeps `Upgrade` and says `Connection: upgrade`, which the next hop needs.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if let (true, Some(value)) = (upgrade, upgrade_value) {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_support::{cluster_cert, TlsServer};
    use axum::extract::{Query, State};
    use axum::routing::{get, post};
    use axum::Router;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the other member runs: it tells what it received.
    fn upstream() -> Router {
        Router::new()
            .route(
                "/1.0/echo",
                get(
                    |Query(q): Query<BTreeMap<String, String>>, headers: HeaderMap| async move {
                        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
                        axum::Json(serde_json::json!({
                            "query": q,
                            "custom": header("x-custom"),
                            "named_in_connection": header("x-hop"),
                        }))
                    },
                ),
            )
            .route(
                "/1.0/upload",
                post(|body: Body| async move {
                    let mut body = body.into_data_stream();
                    let (mut hash, mut len) = (Sha256::new(), 0usize);
                    while let Some(chunk) = futures::StreamExt::next(&mut body).await {
                        let chunk = chunk.unwrap();
                        len += chunk.len();
                        hash.update(&chunk);
                    }
                    axum::Json(serde_json::json!({
                        "sha256": hex::encode(hash.finalize()),
                        "len": len,
                    }))
                }),
            )
            .route("/1.0/echo-upgrade", get(upgrade_echo))
    }

    /// A 101 to protocol `cairn-echo`, then "echo:" before every chunk read.
    async fn upgrade_echo(mut req: Request) -> Response {
        assert!(is_upgrade(req.headers()), "{:?}", req.headers());
        assert_eq!(req.uri().query(), Some("secret=s3"));
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(on_upgrade.await.unwrap());
            let mut buf = [0u8; 1024];
            loop {
                let n = io.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                io.write_all(b"echo:").await.unwrap();
                io.write_all(&buf[..n]).await.unwrap();
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "cairn-echo")
            .body(Body::empty())
            .unwrap()
    }

    /// This member: everything goes to `addr`. Plain HTTP, as the client side is not what
    /// is tested here.
    async fn front(peer: PeerClient, addr: String) -> String {
        let app = Router::new()
            .fallback(
                |State((peer, addr)): State<(PeerClient, String)>, req: Request| async move {
                    forward(&peer, &addr, req).await
                },
            )
            .with_state((peer, addr));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        front
    }

    async fn member_and_front() -> (TlsServer, String) {
        let (cert, pem, key) = cluster_cert();
        let member = TlsServer::start(upstream(), &cert, Some(cert.der().clone())).await;
        let peer = PeerClient::new(&pem, &key).unwrap();
        let front = front(peer, member.addr.clone()).await;
        (member, front)
    }

    async fn send(req: axum::http::Request<Body>) -> (StatusCode, serde_json::Value) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_get_arrives_with_its_query_and_end_to_end_headers() {
        let (_member, front) = member_and_front().await;
        let req = axum::http::Request::get(format!(
            "http://{front}/1.0/echo?target=node2&project=default"
        ))
        .header("x-custom", "kept")
        .header(header::CONNECTION, "x-hop")
        .header("x-hop", "dropped")
        .body(Body::empty())
        .unwrap();
        let (status, body) = send(req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            serde_json::json!({
                "query": {"target": "node2", "project": "default"},
                "custom": "kept",
                "named_in_connection": null,
            })
        );
    }

    #[tokio::test]
    async fn a_large_upload_streams_through_unchanged() {
        let (_member, front) = member_and_front().await;
        let chunks: Vec<Bytes> = (0..80u32)
            .map(|i| Bytes::from((0..65536u32).map(|j| (i * 7 + j) as u8).collect::<Vec<_>>()))
            .collect();
        let mut expected = Sha256::new();
        for c in &chunks {
            expected.update(c);
        }
        // No length given: the body is sent chunked, as it is produced.
        let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        let req = axum::http::Request::post(format!("http://{front}/1.0/upload"))
            .body(Body::from_stream(stream))
            .unwrap();
        let (status, body) = send(req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["len"], 80 * 65536);
        assert_eq!(body["sha256"], hex::encode(expected.finalize()));
    }

    #[tokio::test]
    async fn an_upgrade_is_spliced_byte_for_byte() {
        let (_member, front) = member_and_front().await;
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            upgrade_echo_through(&front),
        )
        .await
        .expect("the upgraded exchange did not finish");
    }

    async fn upgrade_echo_through(front: &str) {
        let mut tcp = tokio::net::TcpStream::connect(front).await.unwrap();
        tcp.write_all(
            b"GET /1.0/echo-upgrade?secret=s3 HTTP/1.1\r\nHost: x\r\n\
              Connection: Upgrade\r\nUpgrade: cairn-echo\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "{head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: cairn-echo"), "{head}");

        for msg in [&b"ping"[..], b"\x00\xffbinary"] {
            tcp.write_all(msg).await.unwrap();
            let mut got = vec![0u8; 5 + msg.len()];
            tcp.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [&b"echo:"[..], msg].concat());
        }
        // Closing our side closes the member's, which closes ours.
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn an_unreachable_member_is_a_503_incus_error() {
        let (_, pem, key) = cluster_cert();
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap().to_string();
        drop(gone);
        let front = front(PeerClient::new(&pem, &key).unwrap(), addr.clone()).await;

        let req = axum::http::Request::get(format!(
            "http://{front}/1.0/operations/abc/websocket?secret=s3cr3t"
        ))
        .body(Body::empty())
        .unwrap();
        let (status, body) = send(req).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["type"], "error");
        assert_eq!(body["error_code"], 503);
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(&addr), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn hop_by_hop_headers_go_but_an_upgrade_keeps_its_own() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, x-a"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-b", HeaderValue::from_static("2"));
        assert!(is_upgrade(&headers));

        let mut plain = headers.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1);
        assert_eq!(plain["x-b"], "2");

        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers.len(), 3);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
    }
}
