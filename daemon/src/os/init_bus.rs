//! The client of cairn-init's D-Bus interface: `org.cairn.Init1` at `/org/cairn/Init1` on a
//! peer-to-peer unix socket (no bus daemon). Its methods and signatures are documented with
//! the server, in cairn-init's `control.rs`; the tests in `os/tests.rs` run this client
//! against that server.
//!
//! One connection per request: calls are rare (an operator looking around), and a fresh
//! connection has no state to go stale when cairn-init restarts its server.

use std::path::Path;
use std::time::Duration;

use super::{OsError, PowerAction, Service};

pub const SOCKET: &str = "/run/cairn/init.sock";
const OBJECT_PATH: &str = "/org/cairn/Init1";
const INTERFACE: &str = "org.cairn.Init1";
const ERROR_NO_SUCH_SERVICE: &str = "org.cairn.Init1.Error.NoSuchService";
const ERROR_FAILED: &str = "org.cairn.Init1.Error.Failed";

/// Connecting and the SASL handshake; cairn-init answers at once or not at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One call; reading a 4 MiB log is the slowest.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// `Services()` → `a(ssius)`: name, state, pid (0: not running), failures, log file.
type ServiceRow = (String, String, i32, u32, String);

pub struct Init(zbus::Connection);

impl Init {
    pub async fn connect(socket: &Path) -> Result<Init, OsError> {
        let unreachable = |source| OsError::InitUnreachable {
            path: socket.to_path_buf(),
            source,
        };
        let handshake = async {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(unreachable)?;
            zbus::connection::Builder::unix_stream(stream)
                .p2p()
                .method_timeout(CALL_TIMEOUT)
                .build()
                .await
                .map_err(|source| OsError::Init {
                    what: "handshake",
                    source: Box::new(source),
                })
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(conn) => Ok(Init(conn?)),
            Err(_) => Err(unreachable(std::io::ErrorKind::TimedOut.into())),
        }
    }

    async fn call<A, R>(&self, method: &'static str, args: &A) -> Result<R, OsError>
    where
        A: serde::Serialize + zbus::zvariant::DynamicType,
        R: serde::de::DeserializeOwned + zbus::zvariant::Type,
    {
        let on_error = |source| OsError::Init {
            what: method,
            source: Box::new(source),
        };
        let reply = self
            .0
            .call_method(None::<&str>, OBJECT_PATH, Some(INTERFACE), method, args)
            .await
            .map_err(on_error)?;
        reply.body().deserialize().map_err(on_error)
    }

    pub async fn services(&self) -> Result<Vec<Service>, OsError> {
        let rows: Vec<ServiceRow> = self.call("Services", &()).await?;
        Ok(rows
            .into_iter()
            .map(|(name, state, pid, failures, log)| Service {
                name,
                state,
                pid: (pid > 0).then_some(i64::from(pid)),
                failures: u64::from(failures),
                log,
            })
            .collect())
    }

    pub async fn service_log(&self, name: &str, max_bytes: u64) -> Result<String, OsError> {
        let (what, source) = match self.call("ServiceLog", &(name, max_bytes)).await {
            Err(OsError::Init { what, source }) => (what, source),
            other => return other,
        };
        // The same answers as from the files: 404 for an unknown name, 500 otherwise.
        match *source {
            zbus::Error::MethodError(err, _, _) if err.as_str() == ERROR_NO_SUCH_SERVICE => {
                Err(OsError::NoService(name.into()))
            }
            zbus::Error::MethodError(err, msg, _) if err.as_str() == ERROR_FAILED => {
                Err(OsError::Io(msg.unwrap_or_else(|| err.to_string())))
            }
            source => Err(OsError::Init {
                what,
                source: Box::new(source),
            }),
        }
    }

    pub async fn boots(&self) -> Result<Vec<String>, OsError> {
        self.call("Boots", &()).await
    }

    pub async fn power(&self, action: PowerAction) -> Result<(), OsError> {
        let method = match action {
            PowerAction::Reboot => "Reboot",
            PowerAction::PowerOff => "PowerOff",
        };
        self.call(method, &()).await
    }
}
