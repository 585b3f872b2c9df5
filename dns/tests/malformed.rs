//! Hostile bytes on the server's sockets change nothing and crash nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::RecordType;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const WEB: &str = "web.prod.svc.clusterset.local.";

/// A deterministic xorshift64* stream, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn query_message(id: u16, qname: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(name(qname), qtype));
    message.set_edns(Edns::new());
    message
}

async fn udp_socket(server: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(loopback()).await.unwrap();
    socket.connect(server).await.unwrap();
    socket
}

/// Sends one datagram and returns the decoded reply, or `None` if none comes within `wait`.
async fn exchange(socket: &UdpSocket, datagram: &[u8], wait: Duration) -> Option<Message> {
    socket.send(datagram).await.unwrap();
    let mut buffer = vec![0; 65535];
    let len = timeout(wait, socket.recv(&mut buffer)).await.ok()?.unwrap();
    Some(Message::from_vec(&buffer[..len]).expect("the server's reply decodes"))
}

/// The server still answers a good query correctly, over UDP and TCP.
async fn assert_still_answers(server: SocketAddr) {
    let over_udp = query(&mut udp_client(server), WEB, RecordType::A).await;
    assert_eq!(addresses(&over_udp), ips(&[WEB_V4]));
    let over_tcp = query(&mut tcp_client(server).await, WEB, RecordType::A).await;
    assert_eq!(addresses(&over_tcp), ips(&[WEB_V4]));
}

#[tokio::test]
async fn random_datagrams_do_not_stop_the_server() {
    let (server, _resolver) = start().await;
    let addr = server.local_addr();
    let socket = udp_socket(addr).await;
    let mut rng = Rng(0x1575_7e11_d05e_ed01);
    for round in 0..2000 {
        let len = (rng.next() % 600) as usize;
        let mut datagram = rng.bytes(len);
        // Half of them look like queries (QR clear), so they get past the reflection check.
        if round % 2 == 0 && datagram.len() > 2 {
            datagram[2] &= 0x7f;
        }
        socket.send(&datagram).await.unwrap();
    }
    assert_still_answers(addr).await;
}

#[tokio::test]
async fn truncated_queries_get_formerr_and_change_nothing() {
    let (server, _resolver) = start().await;
    let addr = server.local_addr();
    let socket = udp_socket(addr).await;
    let good = query_message(0x4242, WEB, RecordType::A).to_vec().unwrap();

    // Shorter than a header: there is no ID to answer to, so no reply.
    for len in [0, 1, 11] {
        let reply = exchange(&socket, &good[..len], Duration::from_millis(200)).await;
        assert!(reply.is_none(), "{len}-byte prefix got {reply:?}");
    }
    // A header promising more than follows: FORMERR to the same ID.
    for len in 12..good.len() {
        let reply = exchange(&socket, &good[..len], Duration::from_secs(2))
            .await
            .unwrap_or_else(|| panic!("no reply to the {len}-byte prefix"));
        assert_eq!(reply.metadata.id, 0x4242, "{len}-byte prefix");
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::FormErr,
            "{len}-byte prefix"
        );
        assert!(reply.answers.is_empty(), "{len}-byte prefix");
    }
    // The whole query still works on the same socket.
    let reply = exchange(&socket, &good, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1);
}

#[tokio::test]
async fn well_formed_but_unsupported_messages_get_the_right_rcode() {
    let (server, _resolver) = start().await;
    let addr = server.local_addr();
    let socket = udp_socket(addr).await;
    let wait = Duration::from_secs(2);

    // Two questions (RFC 9619): FORMERR.
    let mut two = query_message(1, WEB, RecordType::A);
    two.add_query(Query::query(name(WEB), RecordType::AAAA));
    let reply = exchange(&socket, &two.to_vec().unwrap(), wait)
        .await
        .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    // No question at all: FORMERR.
    let mut none = Message::new(2, MessageType::Query, OpCode::Query);
    none.set_edns(Edns::new());
    let reply = exchange(&socket, &none.to_vec().unwrap(), wait)
        .await
        .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    // NOTIFY and UPDATE are not implemented.
    for op_code in [OpCode::Notify, OpCode::Update] {
        let mut message = query_message(3, WEB, RecordType::SOA);
        message.metadata.op_code = op_code;
        let reply = exchange(&socket, &message.to_vec().unwrap(), wait)
            .await
            .unwrap();
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NotImp,
            "{op_code:?}"
        );
    }

    // EDNS version 1: BADVERS (RFC 6891 §6.1.3), carried in the OPT record.
    let mut future = query_message(4, WEB, RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    future.set_edns(edns);
    let reply = exchange(&socket, &future.to_vec().unwrap(), wait)
        .await
        .unwrap();
    // 16 is both BADVERS and BADSIG; a decoder cannot tell them apart.
    assert_eq!(
        u16::from(reply.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    assert_eq!(
        reply.edns.as_ref().map(Edns::version),
        Some(0),
        "we speak EDNS 0"
    );

    // A response sent to the server is never answered (no reflection).
    let mut response = query_message(5, WEB, RecordType::A);
    response.metadata.message_type = MessageType::Response;
    let reply = exchange(
        &socket,
        &response.to_vec().unwrap(),
        Duration::from_millis(300),
    )
    .await;
    assert!(reply.is_none(), "answered a response: {reply:?}");

    // A question name whose compression pointer points at itself.
    let mut looped = query_message(6, WEB, RecordType::A).to_vec().unwrap();
    looped.truncate(12);
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    looped[11] = 0; // no OPT record after all
    let reply = exchange(&socket, &looped, wait).await.unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    let counts = server.stats().snapshot();
    assert_eq!(counts.form_err, 2, "the handler's own FORMERRs: {counts:?}");
    assert_eq!(counts.not_imp, 2, "{counts:?}");
    assert_eq!(counts.other, 1, "BADVERS: {counts:?}");
    assert_still_answers(addr).await;
}

#[tokio::test]
async fn garbage_on_tcp_drops_that_connection_only() {
    let (server, _resolver) = start().await;
    let addr = server.local_addr();
    let mut rng = Rng(0xbad_c0ffee);
    let mut healthy = tcp_client(addr).await;

    for len in [0u16, 1, 11, 300, u16::MAX] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let body = rng.bytes(usize::from(len.min(2000)));
        stream.write_all(&len.to_be_bytes()).await.unwrap();
        // Writes may fail once the server has given up on the connection.
        let _ = stream.write_all(&body).await;
        drop(stream);
    }
    // A connection that sends half a length prefix and stalls does not block others.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0]).await.unwrap();

    let reply = query(&mut healthy, WEB, RecordType::A).await;
    assert_eq!(addresses(&reply), ips(&[WEB_V4]));
    assert_still_answers(addr).await;
}
