//! The I/O shell around [`Engine`]: a TUN device and a UDP socket driven by tokio tasks that
//! move batches. TUN offloads (virtio-net header: GSO split on read, GRO on write) come from
//! tun-rs; UDP GSO/GRO and recvmmsg from quinn-udp. Each has a switch in `[dataplane]`.

use super::engine::{Engine, TICK};
use super::queue::{RxQueue, TxQueue};
use crate::config::DataplaneConfig;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tun_rs::{AsyncDevice, GROTable, VIRTIO_NET_HDR_LEN};

/// Packets per TUN batch (tun-rs' ideal batch) and datagram buffers per recvmmsg.
const TUN_BATCH: usize = 128;
const UDP_BATCH: usize = 16;
/// One recvmmsg buffer: with UDP GRO the kernel coalesces up to 64 KiB into it.
const UDP_BUF: usize = 65_536;

/// The UDP side: one dual-stack socket (IPv4 peers are reached through mapped addresses).
pub struct Udp {
    sock: UdpSocket,
    state: quinn_udp::UdpSocketState,
    ipv6: bool,
    gso_segments: usize,
}

impl Udp {
    /// Binds `[::]:port` dual-stack, or `0.0.0.0:port` where IPv6 is unavailable.
    pub fn bind(port: u16, cfg: &DataplaneConfig) -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let (sock, ipv6) = match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
            Ok(s) => {
                s.set_only_v6(false)?;
                match s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into()) {
                    Ok(()) => (s, true),
                    Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Self::bind_v4(port)?,
                    Err(e) => return Err(e),
                }
            }
            Err(_) => Self::bind_v4(port)?,
        };
        // Best effort: larger buffers ride out bursts; the kernel caps them at rmem_max.
        let _ = sock.set_recv_buffer_size(4 << 20);
        let _ = sock.set_send_buffer_size(4 << 20);
        sock.set_nonblocking(true)?;
        let std_sock: std::net::UdpSocket = sock.into();
        let state = quinn_udp::UdpSocketState::new((&std_sock).into())?;
        if !cfg.udp_gro {
            let fd = socket2::SockRef::from(&std_sock);
            // UDP_GRO off: quinn-udp turns it on where the kernel has it.
            set_udp_gro(&fd, false)?;
        }
        let gso_segments = if cfg.udp_gso {
            state.max_gso_segments()
        } else {
            1
        };
        Ok(Self {
            sock: UdpSocket::from_std(std_sock)?,
            state,
            ipv6,
            gso_segments,
        })
    }

    fn bind_v4(port: u16) -> io::Result<(socket2::Socket, bool)> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
        Ok((s, false))
    }

    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.sock.local_addr()?.port())
    }

    pub fn gso_segments(&self) -> usize {
        self.gso_segments
    }

    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn to_socket(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.ipv6 => {
                SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port()))
            }
            a => a,
        }
    }

    /// Sends every run in `tx` (one GSO send per run); failures are counted against the peer.
    pub async fn send(&self, engine: &Engine, tx: &TxQueue) {
        for (run, bytes) in tx.runs() {
            let transmit = quinn_udp::Transmit {
                destination: self.to_socket(run.dest),
                ecn: None,
                contents: bytes,
                segment_size: (run.segments > 1).then_some(run.segment_size),
                src_ip: None,
            };
            let result = loop {
                match self.sock.try_io(Interest::WRITABLE, || {
                    self.state.try_send((&self.sock).into(), &transmit)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.sock.writable().await.is_err() {
                            break Err(e);
                        }
                    }
                    r => break r,
                }
            };
            if let Err(e) = result {
                tracing::debug!(dest = %run.dest, error = %e, "send failed");
                engine
                    .drops
                    .add(super::DropReason::SendFailed, run.segments as u64);
                if let Some(peer) = &run.peer {
                    peer.drops
                        .add(super::DropReason::SendFailed, run.segments as u64);
                    peer.note_send_error(Instant::now(), &e);
                }
            }
        }
    }
}

fn set_udp_gro(sock: &socket2::SockRef<'_>, on: bool) -> io::Result<()> {
    use std::os::fd::AsFd;
    nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::UdpGroSegment, &on)
        .map_err(io::Error::from)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        a => a,
    }
}

/// The running data plane: three tasks sharing the engine, TUN and UDP socket.
pub struct Running {
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

pub fn start(
    engine: Arc<Engine>,
    tun: Arc<AsyncDevice>,
    udp: Arc<Udp>,
    mtu: usize,
    offload: bool,
) -> Running {
    let (shutdown, rx) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(tun_to_udp(
            engine.clone(),
            tun.clone(),
            udp.clone(),
            mtu,
            offload,
            rx.clone(),
        )),
        tokio::spawn(udp_to_tun(
            engine.clone(),
            tun,
            udp.clone(),
            mtu,
            offload,
            rx.clone(),
        )),
        tokio::spawn(timers(engine, udp, rx)),
    ];
    Running { shutdown, tasks }
}

async fn tun_to_udp(
    engine: Arc<Engine>,
    tun: Arc<AsyncDevice>,
    udp: Arc<Udp>,
    mtu: usize,
    offload: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let slot = mtu + 64;
    let mut original = if offload {
        vec![0u8; VIRTIO_NET_HDR_LEN + 65_535]
    } else {
        Vec::new()
    };
    let mut bufs: Vec<Vec<u8>> = (0..TUN_BATCH).map(|_| vec![0u8; slot]).collect();
    let mut sizes = vec![0usize; TUN_BATCH];
    let mut tx = TxQueue::new(TUN_BATCH, slot + 32, udp.gso_segments());
    loop {
        let n = tokio::select! {
            _ = shutdown.changed() => return,
            r = tun.recv_multiple(&mut original, &mut bufs, &mut sizes, 0) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "reading from the TUN device failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let mut ready = n;
        let mut batch = 0;
        loop {
            for i in 0..ready {
                if tx.is_full() {
                    udp.send(&engine, &tx).await;
                    tx.clear();
                }
                engine.encapsulate(&mut bufs[i], sizes[i], &mut tx);
            }
            batch += ready.max(1);
            // Without offload every read is one packet: drain what else is ready into the batch.
            if batch >= TUN_BATCH {
                break;
            }
            match tun.try_recv_multiple(&mut original, &mut bufs, &mut sizes, 0) {
                Ok(m) => ready = m,
                Err(_) => break,
            }
        }
        udp.send(&engine, &tx).await;
        tx.clear();
    }
}

async fn udp_to_tun(
    engine: Arc<Engine>,
    tun: Arc<AsyncDevice>,
    udp: Arc<Udp>,
    mtu: usize,
    offload: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let headroom = if offload { VIRTIO_NET_HDR_LEN } else { 0 };
    let mut storage: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| vec![0u8; UDP_BUF]).collect();
    let mut meta = vec![quinn_udp::RecvMeta::default(); UDP_BATCH];
    let mut rx = RxQueue::new(TUN_BATCH, mtu + 64, headroom);
    let mut tx = TxQueue::new(32, 256.max(mtu + 96), 1);
    let mut gro = GROTable::default();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            r = udp.sock.readable() => if r.is_err() { continue },
        }
        let received = {
            let mut it = storage.iter_mut();
            let mut iovs: [IoSliceMut<'_>; UDP_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(it.next().expect("UDP_BATCH buffers")));
            udp.sock.try_io(Interest::READABLE, || {
                udp.state.recv((&udp.sock).into(), &mut iovs, &mut meta)
            })
        };
        let count = match received {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        // One clock read per batch: when its peers were last heard.
        let now = Instant::now();
        for (m, buf) in meta.iter().zip(&storage).take(count) {
            let src = canonical(m.addr);
            if m.len == 0 {
                // An empty datagram is no WireGuard message; `chunks` would skip it uncounted.
                engine.drops.inc(super::DropReason::Malformed);
                continue;
            }
            let stride = m.stride.max(1);
            for datagram in buf[..m.len].chunks(stride) {
                engine.decapsulate(src, datagram, now, &mut rx, &mut tx);
                if rx.is_full() {
                    flush_tun(&engine, &tun, &mut rx, &mut gro).await;
                }
                if tx.is_full() {
                    udp.send(&engine, &tx).await;
                    tx.clear();
                }
            }
        }
        flush_tun(&engine, &tun, &mut rx, &mut gro).await;
        if !tx.is_empty() {
            udp.send(&engine, &tx).await;
            tx.clear();
        }
    }
}

async fn flush_tun(engine: &Engine, tun: &AsyncDevice, rx: &mut RxQueue, gro: &mut GROTable) {
    if rx.is_empty() {
        return;
    }
    let headroom = rx.headroom();
    if let Err(e) = tun.send_multiple(gro, rx.packets_mut(), headroom).await {
        tracing::debug!(error = %e, "writing to the TUN device failed");
        engine.drops.inc(super::DropReason::TunWriteFailed);
    }
    rx.clear();
}

/// Every [`TICK`], one round of every peer's timers, sent in batches of the queue's size. The
/// ticks fall on the gateway's timer grid (`crate::clock`), so the liveness probes of every
/// gateway go out at the same instants and the control plane's health check runs right after.
async fn timers(engine: Arc<Engine>, udp: Arc<Udp>, mut shutdown: watch::Receiver<bool>) {
    let mut tx = TxQueue::new(64, 256, 1);
    let mut interval = crate::clock::grid_interval(TICK);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = interval.tick() => {}
        }
        // The clock boringtun's timers read, not the tick's deadline (tokio's, which lags
        // when the runtime was busy and stops when tokio time is paused).
        let mut round = engine.tick(Instant::now());
        loop {
            let done = round.run(&mut tx);
            udp.send(&engine, &tx).await;
            tx.clear();
            if done {
                break;
            }
        }
    }
}
