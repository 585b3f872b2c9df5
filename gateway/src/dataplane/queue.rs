//! Batch buffers between the engine and the kernel: pooled, reused across batches, never
//! allocated on the packet path once warm.
//!
//! [`TxQueue`] packs encrypted datagrams back to back and groups consecutive datagrams of the
//! same size to the same destination into runs, so the I/O shell can hand a run to the kernel
//! as one UDP GSO send (`UDP_SEGMENT`: equal segments, only the last may be shorter).
//! [`RxQueue`] holds decrypted packets, each behind `headroom` bytes the TUN writer needs for
//! its virtio-net header.

use super::peer::Peer;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest UDP payload a GSO run may carry in total (the kernel limit is 64 KiB less headers).
const MAX_GSO_BYTES: usize = 65_000;

#[derive(Debug, Clone)]
pub struct TxRun {
    pub dest: SocketAddr,
    pub start: usize,
    pub len: usize,
    /// Size of every datagram in the run but possibly the last.
    pub segment_size: usize,
    pub segments: usize,
    /// The peer the run belongs to, for error attribution; `None` for cookie replies.
    pub peer: Option<Arc<Peer>>,
}

pub struct TxQueue {
    buf: Vec<u8>,
    used: usize,
    runs: Vec<TxRun>,
    max_segments: usize,
    slot_size: usize,
}

impl TxQueue {
    /// `slots` datagrams of at most `slot_size` bytes each; `max_segments` is how many the
    /// kernel accepts in one GSO send (1 turns coalescing off).
    pub fn new(slots: usize, slot_size: usize, max_segments: usize) -> Self {
        let slot_size = slot_size.max(256);
        Self {
            buf: vec![0; slots * slot_size],
            used: 0,
            runs: Vec::with_capacity(slots),
            max_segments: max_segments.max(1),
            slot_size,
        }
    }

    pub fn is_full(&self) -> bool {
        self.buf.len() - self.used < self.slot_size
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The free space a datagram is written into before [`commit`](Self::commit).
    pub fn slot(&mut self) -> &mut [u8] {
        let end = (self.used + self.slot_size).min(self.buf.len());
        &mut self.buf[self.used..end]
    }

    /// Appends the `len` bytes just written into [`slot`](Self::slot) as a datagram to `dest`.
    pub fn commit(&mut self, dest: SocketAddr, len: usize, peer: Option<&Arc<Peer>>) {
        debug_assert!(len <= self.slot_size);
        let start = self.used;
        self.used += len;
        if let Some(last) = self.runs.last_mut() {
            let tail_full = last.len == last.segment_size * last.segments;
            if last.dest == dest
                && tail_full
                && len <= last.segment_size
                && last.segments < self.max_segments
                && last.len + len <= MAX_GSO_BYTES
                && last.start + last.len == start
            {
                last.len += len;
                last.segments += 1;
                return;
            }
        }
        self.runs.push(TxRun {
            dest,
            start,
            len,
            segment_size: len,
            segments: 1,
            peer: peer.cloned(),
        });
    }

    /// Copies `bytes` in as a datagram to `dest`.
    pub fn push(&mut self, dest: SocketAddr, bytes: &[u8], peer: Option<&Arc<Peer>>) {
        let n = bytes.len().min(self.slot_size);
        self.slot()[..n].copy_from_slice(&bytes[..n]);
        self.commit(dest, n, peer);
    }

    pub fn runs(&self) -> impl Iterator<Item = (&TxRun, &[u8])> {
        self.runs
            .iter()
            .map(|r| (r, &self.buf[r.start..r.start + r.len]))
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.runs.clear();
    }
}

pub struct RxQueue {
    bufs: Vec<Vec<u8>>,
    /// Which peer each packet came from, for error attribution.
    peers: Vec<Option<Arc<Peer>>>,
    count: usize,
    headroom: usize,
    slot_size: usize,
}

impl RxQueue {
    pub fn new(slots: usize, slot_size: usize, headroom: usize) -> Self {
        Self {
            bufs: (0..slots)
                .map(|_| Vec::with_capacity(headroom + slot_size))
                .collect(),
            peers: vec![None; slots],
            count: 0,
            headroom,
            slot_size,
        }
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }

    pub fn is_full(&self) -> bool {
        self.count == self.bufs.len()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Room for the next packet; at least `min` bytes.
    pub fn slot(&mut self, min: usize) -> &mut [u8] {
        let size = self.headroom + self.slot_size.max(min);
        let b = &mut self.bufs[self.count];
        b.resize(size, 0);
        &mut b[self.headroom..]
    }

    pub fn commit(&mut self, len: usize, peer: &Arc<Peer>) {
        let b = &mut self.bufs[self.count];
        b.truncate(self.headroom + len);
        self.peers[self.count] = Some(peer.clone());
        self.count += 1;
    }

    /// The packets, each still behind its headroom, as the TUN writer wants them.
    pub fn packets_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs[..self.count]
    }

    pub fn packet(&self, i: usize) -> &[u8] {
        &self.bufs[i][self.headroom..]
    }

    pub fn peer(&self, i: usize) -> Option<&Arc<Peer>> {
        self.peers[i].as_ref()
    }

    pub fn clear(&mut self) {
        for p in &mut self.peers[..self.count] {
            *p = None;
        }
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], p))
    }

    fn fill(q: &mut TxQueue, dest: SocketAddr, len: usize) {
        q.slot()[..len].fill(len as u8);
        q.commit(dest, len, None);
    }

    #[test]
    fn equal_sizes_to_one_destination_form_one_run() {
        let mut q = TxQueue::new(16, 1500, 64);
        for _ in 0..5 {
            fill(&mut q, addr(1), 1000);
        }
        fill(&mut q, addr(1), 300); // a shorter tail joins
        fill(&mut q, addr(1), 1000); // but nothing may follow a short tail
        fill(&mut q, addr(2), 1000); // another destination
        let runs: Vec<_> = q
            .runs()
            .map(|(r, b)| (r.segments, r.segment_size, b.len()))
            .collect();
        assert_eq!(
            runs,
            vec![(6, 1000, 5300), (1, 1000, 1000), (1, 1000, 1000)]
        );
    }

    #[test]
    fn segment_limit_splits_runs() {
        let mut q = TxQueue::new(8, 500, 3);
        for _ in 0..8 {
            fill(&mut q, addr(1), 500);
        }
        let segs: Vec<_> = q.runs().map(|(r, _)| r.segments).collect();
        assert_eq!(segs, vec![3, 3, 2]);
        assert!(q.is_full());
        q.clear();
        assert!(q.is_empty() && !q.is_full());
    }

    #[test]
    fn larger_datagram_starts_new_run() {
        let mut q = TxQueue::new(8, 1500, 64);
        fill(&mut q, addr(1), 148);
        fill(&mut q, addr(1), 1000);
        assert_eq!(q.runs().count(), 2);
    }
}
