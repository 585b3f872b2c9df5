//! The join state machines. No I/O, no clock: frames and `now` in, frames and a deadline out.
//! See the module docs of [`crate::identity`] for the message flow and the caller's contract.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use super::wire::{self, Answer, JoinHello, JoinRequest, Verdict, WireError};
use super::{JoinError, PeerVerifier, VerifiedPeer, JOIN_TIMEOUT};
use crate::keys::PrivateKey;
use isthmus_pki::SpiffeId;

/// The Noise protocol name (Noise spec §8).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Binds both sides to this protocol, so a Noise XX handshake meant for something else cannot be
/// replayed into a join (Noise spec §6).
pub(crate) const PROLOGUE: &[u8] = b"isthmus-join";

/// What a frame led to.
#[derive(Debug)]
#[must_use]
pub enum Step {
    /// The join goes on: send what `poll_frame` yields and wait for the next frame.
    Continue,
    /// Both sides verified and accepted each other.
    Joined(Joined),
}

/// A finished join: who the peer is and the WireGuard key it proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The peer's SPIFFE ID, as the verifier read it from the chain.
    pub peer_id: SpiffeId,
    /// When the peer's SVID (chain) stops being valid.
    pub not_after: SystemTime,
    /// The peer's Noise static key, which is its WireGuard static public key.
    pub remote_static: [u8; 32],
    /// The chain the peer presented (DER, leaf first).
    pub remote_chain: Vec<Vec<u8>>,
    /// Where the peer asked for WireGuard traffic to go, if it said.
    pub endpoint_hint: Option<SocketAddr>,
    /// The peer's mesh address, if it said.
    pub mesh_addr: Option<IpAddr>,
    /// The Noise handshake hash, unique to this join (for channel binding or logs).
    pub handshake_hash: Vec<u8>,
}

enum Noise {
    Handshake(Box<snow::HandshakeState>),
    Transport(Box<snow::TransportState>),
    Gone,
}

/// What both roles share: the Noise state, the frames waiting to go out, and the deadline.
struct Core {
    noise: Noise,
    outbox: VecDeque<Vec<u8>>,
    deadline: SystemTime,
    ended: bool,
    verifier: Arc<dyn PeerVerifier>,
    hello: JoinHello,
    handshake_hash: Vec<u8>,
}

impl Core {
    fn new(
        local_key: &PrivateKey,
        initiator: bool,
        chain: Vec<Vec<u8>>,
        verifier: Arc<dyn PeerVerifier>,
        now: SystemTime,
    ) -> Result<Self, JoinError> {
        let hello = JoinHello::new(chain);
        hello.check().map_err(JoinError::LocalChain)?;
        let params = NOISE_PARAMS.parse().map_err(JoinError::Noise)?;
        let secret = local_key.secret().to_bytes();
        let builder = snow::Builder::new(params)
            .local_private_key(&secret)
            .and_then(|b| b.prologue(PROLOGUE))
            .map_err(JoinError::Noise)?;
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(JoinError::Noise)?;
        Ok(Self {
            noise: Noise::Handshake(Box::new(state)),
            outbox: VecDeque::new(),
            deadline: now + JOIN_TIMEOUT,
            ended: false,
            verifier,
            hello,
            handshake_hash: Vec::new(),
        })
    }

    /// Refuses a frame before it reaches Noise: after the end, after the deadline, or too big.
    fn admit(&mut self, frame: &[u8], now: SystemTime) -> Result<(), JoinError> {
        if self.ended {
            return Err(JoinError::Ended);
        }
        if now >= self.deadline {
            self.ended = true;
            return Err(JoinError::Timeout);
        }
        if frame.len() > wire::MAX_FRAME_LEN {
            self.ended = true;
            return Err(JoinError::FrameTooLarge { len: frame.len() });
        }
        Ok(())
    }

    /// Marks the join ended when `result` finishes it either way.
    fn settle(&mut self, result: Result<Step, JoinError>) -> Result<Step, JoinError> {
        if !matches!(result, Ok(Step::Continue)) {
            self.ended = true;
            self.noise = Noise::Gone;
        }
        result
    }

    fn handshake(&mut self) -> Result<&mut snow::HandshakeState, JoinError> {
        match &mut self.noise {
            Noise::Handshake(h) => Ok(h),
            _ => Err(JoinError::UnexpectedFrame),
        }
    }

    /// Refuses inside the next handshake message (message 2 as responder, 3 as initiator),
    /// so the peer learns why.
    fn refuse_in_handshake(&mut self, reason: String) -> Result<(), JoinError> {
        let payload = Answer::Refuse { reason }.encode()?;
        self.write_handshake(&payload)
    }

    fn write_handshake(&mut self, payload: &[u8]) -> Result<(), JoinError> {
        let mut buf = vec![0u8; payload.len() + wire::NOISE_OVERHEAD];
        let n = self
            .handshake()?
            .write_message(payload, &mut buf)
            .map_err(JoinError::Noise)?;
        buf.truncate(n);
        self.outbox.push_back(buf);
        Ok(())
    }

    fn read_handshake(&mut self, frame: &[u8]) -> Result<Vec<u8>, JoinError> {
        let mut buf = vec![0u8; frame.len()];
        let n = self
            .handshake()?
            .read_message(frame, &mut buf)
            .map_err(JoinError::Noise)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn remote_static(&mut self) -> Result<[u8; 32], JoinError> {
        self.handshake()?
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or(JoinError::UnexpectedFrame)
    }

    fn enter_transport(&mut self) -> Result<(), JoinError> {
        match std::mem::replace(&mut self.noise, Noise::Gone) {
            Noise::Handshake(h) => {
                self.handshake_hash = h.get_handshake_hash().to_vec();
                let t = h.into_transport_mode().map_err(JoinError::Noise)?;
                self.noise = Noise::Transport(Box::new(t));
                Ok(())
            }
            other => {
                self.noise = other;
                Err(JoinError::UnexpectedFrame)
            }
        }
    }

    fn transport(&mut self) -> Result<&mut snow::TransportState, JoinError> {
        match &mut self.noise {
            Noise::Transport(t) => Ok(t),
            _ => Err(JoinError::UnexpectedFrame),
        }
    }

    fn send_verdict(&mut self, verdict: &Verdict) -> Result<(), JoinError> {
        let payload = verdict.encode();
        let mut buf = vec![0u8; payload.len() + 16];
        let n = self
            .transport()?
            .write_message(&payload, &mut buf)
            .map_err(JoinError::Noise)?;
        buf.truncate(n);
        self.outbox.push_back(buf);
        Ok(())
    }

    fn read_verdict(&mut self, frame: &[u8]) -> Result<Verdict, JoinError> {
        let mut buf = vec![0u8; frame.len()];
        let n = self
            .transport()?
            .read_message(frame, &mut buf)
            .map_err(JoinError::Noise)?;
        Ok(Verdict::decode(&buf[..n])?)
    }

    fn local_answer(&self) -> Result<Vec<u8>, JoinError> {
        Answer::Hello(self.hello.clone())
            .encode()
            .map_err(JoinError::LocalChain)
    }

    fn joined(&self, pending: Pending) -> Joined {
        Joined {
            peer_id: pending.peer.id,
            not_after: pending.peer.not_after,
            remote_static: pending.remote_static,
            remote_chain: pending.hello.chain,
            endpoint_hint: pending.hello.endpoint_hint,
            mesh_addr: pending.hello.mesh_addr,
            handshake_hash: self.handshake_hash.clone(),
        }
    }

    fn handle_timeout(&mut self, now: SystemTime) -> Result<(), JoinError> {
        if !self.ended && now >= self.deadline {
            self.ended = true;
            self.noise = Noise::Gone;
            return Err(JoinError::Timeout);
        }
        Ok(())
    }

    fn poll_timeout(&self) -> Option<SystemTime> {
        (!self.ended).then_some(self.deadline)
    }
}

/// A peer verified by us, waiting for its verdict on us.
struct Pending {
    peer: VerifiedPeer,
    remote_static: [u8; 32],
    hello: JoinHello,
}

/// The text a refusal carries when a payload could not be read.
fn unreadable(what: &str, e: WireError) -> String {
    match e {
        WireError::UnsupportedVersion(v) => format!(
            "join protocol version {v} is not supported, this gateway speaks {}",
            wire::PROTOCOL_VERSION
        ),
        other => format!("malformed {what}: {other}"),
    }
}

enum InitiatorState {
    AwaitAnswer,
    AwaitVerdict(Pending),
    Done,
}

/// The side that dials: knows the responder's address and the SPIFFE ID it expects there.
pub struct Initiator {
    core: Core,
    expected: String,
    state: InitiatorState,
}

impl Initiator {
    /// Starts a join to a gateway expected to be `expected`; message 1 is ready in
    /// [`poll_frame`](Self::poll_frame) at once.
    pub fn new(
        local_key: &PrivateKey,
        expected: String,
        chain: Vec<Vec<u8>>,
        verifier: Arc<dyn PeerVerifier>,
        now: SystemTime,
    ) -> Result<Self, JoinError> {
        let mut core = Core::new(local_key, true, chain, verifier, now)?;
        let request = JoinRequest {
            expected: expected.clone(),
        }
        .encode()?;
        core.write_handshake(&request)?;
        Ok(Self {
            core,
            expected,
            state: InitiatorState::AwaitAnswer,
        })
    }

    /// Tells the responder where to send WireGuard traffic.
    pub fn with_endpoint_hint(mut self, hint: SocketAddr) -> Self {
        self.core.hello.endpoint_hint = Some(hint);
        self
    }

    /// Tells the responder our mesh address.
    pub fn with_mesh_addr(mut self, addr: IpAddr) -> Self {
        self.core.hello.mesh_addr = Some(addr);
        self
    }

    pub fn handle_frame(&mut self, frame: &[u8], now: SystemTime) -> Result<Step, JoinError> {
        self.core.admit(frame, now)?;
        let result = self.step(frame, now);
        self.core.settle(result)
    }

    fn step(&mut self, frame: &[u8], now: SystemTime) -> Result<Step, JoinError> {
        match std::mem::replace(&mut self.state, InitiatorState::Done) {
            InitiatorState::AwaitAnswer => {
                let payload = self.core.read_handshake(frame)?;
                let remote_static = self.core.remote_static()?;
                let hello = match Answer::decode(&payload) {
                    Ok(Answer::Hello(hello)) => hello,
                    Ok(Answer::Refuse { reason }) => {
                        return Err(JoinError::RefusedByPeer { reason })
                    }
                    Err(e) => {
                        let reason = unreadable("message 2", e);
                        self.core.refuse_in_handshake(reason)?;
                        return Err(e.into());
                    }
                };
                let verified = self.core.verifier.verify(
                    &hello.chain,
                    &remote_static,
                    Some(&self.expected),
                    now,
                );
                match verified {
                    Ok(peer) => {
                        let answer = self.core.local_answer()?;
                        self.core.write_handshake(&answer)?;
                        self.core.enter_transport()?;
                        self.core.send_verdict(&Verdict::Accept)?;
                        self.state = InitiatorState::AwaitVerdict(Pending {
                            peer,
                            remote_static,
                            hello,
                        });
                        Ok(Step::Continue)
                    }
                    Err(refused) => {
                        let rule = refused.to_string();
                        self.core.refuse_in_handshake(rule.clone())?;
                        Err(JoinError::VerificationFailed { rule })
                    }
                }
            }
            InitiatorState::AwaitVerdict(pending) => match self.core.read_verdict(frame)? {
                Verdict::Accept => Ok(Step::Joined(self.core.joined(pending))),
                Verdict::Refuse { reason } => Err(JoinError::RefusedByPeer { reason }),
            },
            InitiatorState::Done => Err(JoinError::Ended),
        }
    }

    /// The next frame to send (without its length prefix).
    pub fn poll_frame(&mut self) -> Option<Vec<u8>> {
        self.core.outbox.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called, unless a frame comes first.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        self.core.poll_timeout()
    }

    /// Ends the join with [`JoinError::Timeout`] once its deadline has passed.
    pub fn handle_timeout(&mut self, now: SystemTime) -> Result<(), JoinError> {
        self.core.handle_timeout(now)
    }

    pub fn is_ended(&self) -> bool {
        self.core.ended
    }
}

enum ResponderState {
    AwaitRequest,
    AwaitAnswer,
    AwaitVerdict(Pending),
    Done,
}

/// The side that listens on the join port.
pub struct Responder {
    core: Core,
    local_id: Option<String>,
    state: ResponderState,
}

impl Responder {
    pub fn new(
        local_key: &PrivateKey,
        chain: Vec<Vec<u8>>,
        verifier: Arc<dyn PeerVerifier>,
        now: SystemTime,
    ) -> Result<Self, JoinError> {
        Ok(Self {
            core: Core::new(local_key, false, chain, verifier, now)?,
            local_id: None,
            state: ResponderState::AwaitRequest,
        })
    }

    /// Our own SPIFFE ID: an initiator expecting another identity is refused in message 2,
    /// before it sees our chain. Without it, the initiator's verifier catches the mismatch.
    pub fn with_spiffe_id(mut self, id: String) -> Self {
        self.local_id = Some(id);
        self
    }

    /// Tells the initiator where to send WireGuard traffic.
    pub fn with_endpoint_hint(mut self, hint: SocketAddr) -> Self {
        self.core.hello.endpoint_hint = Some(hint);
        self
    }

    /// Tells the initiator our mesh address.
    pub fn with_mesh_addr(mut self, addr: IpAddr) -> Self {
        self.core.hello.mesh_addr = Some(addr);
        self
    }

    pub fn handle_frame(&mut self, frame: &[u8], now: SystemTime) -> Result<Step, JoinError> {
        self.core.admit(frame, now)?;
        let result = self.step(frame, now);
        self.core.settle(result)
    }

    fn step(&mut self, frame: &[u8], now: SystemTime) -> Result<Step, JoinError> {
        match std::mem::replace(&mut self.state, ResponderState::Done) {
            ResponderState::AwaitRequest => {
                let payload = self.core.read_handshake(frame)?;
                let request = match JoinRequest::decode(&payload) {
                    Ok(r) => r,
                    Err(e) => {
                        self.core.refuse_in_handshake(unreadable("message 1", e))?;
                        return Err(e.into());
                    }
                };
                if let Some(local) = self
                    .local_id
                    .as_ref()
                    .filter(|l| !super::id_matches(&request.expected, l))
                {
                    let local = local.clone();
                    self.core.refuse_in_handshake(format!(
                        "this gateway is {local}, not {} [wrong-identity]",
                        request.expected
                    ))?;
                    return Err(JoinError::NotExpectedIdentity {
                        expected: request.expected,
                        local,
                    });
                }
                let answer = self.core.local_answer()?;
                self.core.write_handshake(&answer)?;
                self.state = ResponderState::AwaitAnswer;
                Ok(Step::Continue)
            }
            ResponderState::AwaitAnswer => {
                let payload = self.core.read_handshake(frame)?;
                let remote_static = self.core.remote_static()?;
                self.core.enter_transport()?;
                let hello = match Answer::decode(&payload) {
                    Ok(Answer::Hello(hello)) => hello,
                    Ok(Answer::Refuse { reason }) => {
                        return Err(JoinError::RefusedByPeer { reason })
                    }
                    Err(e) => {
                        self.core.send_verdict(&Verdict::Refuse {
                            reason: unreadable("message 3", e),
                        })?;
                        return Err(e.into());
                    }
                };
                match self
                    .core
                    .verifier
                    .verify(&hello.chain, &remote_static, None, now)
                {
                    Ok(peer) => {
                        self.core.send_verdict(&Verdict::Accept)?;
                        self.state = ResponderState::AwaitVerdict(Pending {
                            peer,
                            remote_static,
                            hello,
                        });
                        Ok(Step::Continue)
                    }
                    Err(refused) => {
                        let rule = refused.to_string();
                        self.core.send_verdict(&Verdict::Refuse {
                            reason: rule.clone(),
                        })?;
                        Err(JoinError::VerificationFailed { rule })
                    }
                }
            }
            ResponderState::AwaitVerdict(pending) => match self.core.read_verdict(frame)? {
                Verdict::Accept => Ok(Step::Joined(self.core.joined(pending))),
                Verdict::Refuse { reason } => Err(JoinError::RefusedByPeer { reason }),
            },
            ResponderState::Done => Err(JoinError::Ended),
        }
    }

    /// The next frame to send (without its length prefix).
    pub fn poll_frame(&mut self) -> Option<Vec<u8>> {
        self.core.outbox.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called, unless a frame comes first.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        self.core.poll_timeout()
    }

    /// Ends the join with [`JoinError::Timeout`] once its deadline has passed.
    pub fn handle_timeout(&mut self, now: SystemTime) -> Result<(), JoinError> {
        self.core.handle_timeout(now)
    }

    pub fn is_ended(&self) -> bool {
        self.core.ended
    }
}
