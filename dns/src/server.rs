//! Sockets and lifecycle: bind UDP and TCP on one port, serve, shut down.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::handler::Handler;
use crate::zone::Zone;
use crate::{DnsConfig, DnsError, QueryStats, ServiceResolver};

/// Per-connection queue of TCP responses waiting to be written.
const TCP_RESPONSE_BUFFER: usize = 32;
/// With port 0, tries to find a port free for both UDP and TCP.
const PORT_PICK_ATTEMPTS: usize = 16;

/// A running `clusterset.local` DNS server.
///
/// [`bind`](Self::bind) binds and starts serving at once (on the current tokio runtime). The
/// sockets stay open until [`shutdown`](Self::shutdown), until [`run`](Self::run) returns, or
/// until the `DnsServer` is dropped (which aborts its tasks).
pub struct DnsServer {
    local_addr: SocketAddr,
    server: Server<Handler>,
    stats: Arc<QueryStats>,
}

impl DnsServer {
    /// Binds UDP and TCP on `config.listen` (both on the same port, also when it is 0) and
    /// starts answering from `resolver`.
    pub async fn bind(
        config: DnsConfig,
        resolver: Arc<dyn ServiceResolver>,
    ) -> Result<Self, DnsError> {
        let (udp, tcp) = bind_pair(config.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::BindUdp {
            addr: config.listen,
            source,
        })?;
        let stats = Arc::new(QueryStats::default());
        let handler = Handler {
            zone: Zone::new(&config.zone, config.ttl_secs, Some(local_addr.ip())),
            resolver,
            stats: stats.clone(),
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, config.tcp_idle_timeout, TCP_RESPONSE_BUFFER);
        info!(%local_addr, zone = %config.zone, "DNS server listening");
        Ok(Self {
            local_addr,
            server,
            stats,
        })
    }

    /// The address both the UDP socket and the TCP listener are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Live query counters; the handle stays readable after the server is moved into a task.
    pub fn stats(&self) -> Arc<QueryStats> {
        self.stats.clone()
    }

    /// A handle that stops the server from elsewhere (e.g. a signal handler) while
    /// [`run`](Self::run) is awaited.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.server.shutdown_token().clone())
    }

    /// Serves until a [`ShutdownHandle`] fires or a listener fails; the sockets are closed when
    /// it returns.
    pub async fn run(mut self) -> Result<(), DnsError> {
        self.server
            .block_until_done()
            .await
            .map_err(DnsError::Listener)
    }

    /// Stops accepting queries, aborts open TCP connections and closes the sockets; they are
    /// closed when this returns.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(DnsError::Listener)
    }
}

/// Stops a [`DnsServer`] whose [`run`](DnsServer::run) is being awaited elsewhere.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Asks the server to stop; `run` then returns once the sockets are closed.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// Binds UDP then TCP on the same port. With port 0 the kernel picks the UDP port, and a
/// retry covers the case where that port is taken for TCP.
async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let attempts = if listen.port() == 0 {
        PORT_PICK_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| DnsError::BindUdp {
                addr: listen,
                source,
            })?;
        let udp_addr = udp.local_addr().map_err(|source| DnsError::BindUdp {
            addr: listen,
            source,
        })?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => last_error = Some(error),
            Err(source) => {
                return Err(DnsError::BindTcp {
                    addr: udp_addr,
                    source,
                })
            }
        }
    }
    Err(DnsError::BindTcp {
        addr: listen,
        source: last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()),
    })
}
