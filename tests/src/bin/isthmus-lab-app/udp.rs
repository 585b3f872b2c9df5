//! The UDP side of `serve`: every datagram is answered from the address it was sent to, read
//! from `IP_PKTINFO` / `IPV6_PKTINFO` (ip(7), ipv6(7)). A socket bound to a wildcard address
//! would otherwise reply from whatever source the route picks, which a pod with two addresses
//! (two backends) gets wrong, and an address translation on the way back would not match.

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};

use crate::emit;

/// Largest datagram answered whole.
const MAX_DATAGRAM: usize = 65_535;

pub struct UdpServer {
    socket: UdpSocket,
    local: SocketAddr,
}

impl UdpServer {
    pub fn bind(addr: SocketAddr) -> Result<UdpServer> {
        let socket = UdpSocket::bind(addr)?;
        match addr {
            SocketAddr::V4(_) => setsockopt(&socket, sockopt::Ipv4PacketInfo, &true),
            SocketAddr::V6(_) => setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true),
        }
        .context("failed to ask for packet info")?;
        let local = socket.local_addr()?;
        Ok(UdpServer { socket, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Answers datagrams forever; a failed datagram is reported and skipped.
    pub fn serve(&self, name: &str) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, peer, dst) = match self.receive(&mut buf) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("isthmus-lab-app: UDP {}: {e:#}", self.local);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let local = SocketAddr::new(dst, self.local.port());
            emit(&format!("udp {peer} {local}"));
            let mut reply = format!("{name} {local}\n").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            reply.truncate(MAX_DATAGRAM);
            if let Err(e) = self.reply(&reply, peer, dst) {
                eprintln!("isthmus-lab-app: UDP reply to {peer}: {e:#}");
            }
        }
    }

    /// One datagram: its length, sender and the address it was sent to.
    fn receive(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr, IpAddr)> {
        let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .context("recvmsg")?;
        let peer = msg
            .address
            .as_ref()
            .and_then(to_std)
            .context("datagram without a sender")?;
        let dst = msg
            .cmsgs()
            .context("control messages truncated")?
            .find_map(|c| match c {
                ControlMessageOwned::Ipv4PacketInfo(info) => Some(IpAddr::V4(Ipv4Addr::from(
                    u32::from_be(info.ipi_addr.s_addr),
                ))),
                ControlMessageOwned::Ipv6PacketInfo(info) => {
                    Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)))
                }
                _ => None,
            })
            .unwrap_or(self.local.ip());
        Ok((msg.bytes, peer, dst))
    }

    fn reply(&self, data: &[u8], peer: SocketAddr, src: IpAddr) -> Result<()> {
        let iov = [IoSlice::new(data)];
        let to = SockaddrStorage::from(peer);
        let fd = self.socket.as_raw_fd();
        match src {
            IpAddr::V4(src) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(src).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
                sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&to))
            }
            IpAddr::V6(src) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: src.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                let cmsg = [ControlMessage::Ipv6PacketInfo(&info)];
                sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&to))
            }
        }
        .context("sendmsg")?;
        Ok(())
    }
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*a).into()));
    }
    addr.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into()))
}
