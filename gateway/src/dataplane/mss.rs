//! TCP MSS clamping on the path into the tunnel: a SYN whose MSS option would let the other
//! side send segments larger than the tunnel MTU gets the option lowered, so flows through the
//! tunnel never depend on PMTU discovery (RFC 879 §3 for the option; RFC 1624 for the
//! incremental checksum update).

/// IPv4 header (20) + TCP header (20): MSS = MTU − 40. IPv6: MTU − 60.
const V4_OVERHEAD: usize = 40;
const V6_OVERHEAD: usize = 60;
const TCP: u8 = 6;
const SYN: u8 = 0x02;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) in `packet` to fit `mtu`; returns whether it
/// changed anything. Anything that is not a well-formed, unfragmented TCP SYN is left alone.
pub fn clamp(packet: &mut [u8], mtu: usize) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let (tcp_start, limit) = match first >> 4 {
        4 => {
            if packet.len() < 20 || packet[9] != TCP {
                return false;
            }
            // Only the first fragment carries the TCP header; skip any fragment.
            let frag = u16::from_be_bytes([packet[6], packet[7]]);
            if frag & 0x3fff != 0 {
                return false;
            }
            (
                usize::from(first & 0x0f) * 4,
                mtu.saturating_sub(V4_OVERHEAD),
            )
        }
        // Extension headers before TCP are left alone: SYNs rarely carry them.
        6 if packet.len() >= 40 && packet[6] == TCP => (40, mtu.saturating_sub(V6_OVERHEAD)),
        _ => return false,
    };
    let Some(tcp) = packet.get_mut(tcp_start..) else {
        return false;
    };
    if tcp.len() < 20 || tcp[13] & SYN == 0 {
        return false;
    }
    let header_len = usize::from(tcp[12] >> 4) * 4;
    if header_len < 20 || header_len > tcp.len() {
        return false;
    }
    let limit = u16::try_from(limit).unwrap_or(u16::MAX);
    let mut i = 20;
    while i < header_len {
        match tcp[i] {
            OPT_END => return false,
            OPT_NOP => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || i + len > header_len {
                    return false;
                }
                if kind == OPT_MSS && len == 4 {
                    let mss = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if mss <= limit {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&limit.to_be_bytes());
                    // A field at an odd offset straddles two checksum words: the sum then
                    // sees its bytes swapped (RFC 1071 §2(B), byte order independence).
                    let (old, new) = if (i + 2) % 2 == 1 {
                        (mss.swap_bytes(), limit.swap_bytes())
                    } else {
                        (mss, limit)
                    };
                    let sum = u16::from_be_bytes([tcp[16], tcp[17]]);
                    tcp[16..18].copy_from_slice(&update_checksum(sum, old, new).to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), in ones' complement arithmetic.
fn update_checksum(sum: u16, old: u16, new: u16) -> u16 {
    let mut acc = u32::from(!sum) + u32::from(!old) + u32::from(new);
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ones_complement_sum(data: &[u8], mut acc: u32) -> u32 {
        for chunk in data.chunks(2) {
            let word = if chunk.len() == 2 {
                u16::from_be_bytes([chunk[0], chunk[1]])
            } else {
                u16::from(chunk[0]) << 8
            };
            acc += u32::from(word);
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// The TCP checksum over the IPv4 pseudo-header, computed from scratch.
    fn tcp_checksum_v4(p: &[u8]) -> u16 {
        let tcp = &p[20..];
        let mut acc = ones_complement_sum(&p[12..20], 0);
        acc += u32::from(TCP) + tcp.len() as u32;
        let mut copy = tcp.to_vec();
        copy[16] = 0;
        copy[17] = 0;
        fold(ones_complement_sum(&copy, acc))
    }

    fn syn_v4(mss: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(48u16).to_be_bytes());
        p[8] = 64;
        p[9] = TCP;
        p[12..16].copy_from_slice(&[10, 1, 1, 2]);
        p[16..20].copy_from_slice(&[10, 2, 1, 2]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 7 << 4; // 28-byte header
        t[13] = flags;
        // NOP, NOP, SACK-permitted, then MSS, then window scale + NOP.
        t[20..28].copy_from_slice(&[OPT_NOP, 4, 2, OPT_MSS, 4, 0, 0, OPT_NOP]);
        t[25..27].copy_from_slice(&mss.to_be_bytes());
        // place MSS at 23..27: kind 2 len 4 value
        t[20] = OPT_NOP;
        t[21] = OPT_NOP;
        t[22] = OPT_NOP;
        t[23] = OPT_MSS;
        t[24] = 4;
        t[25..27].copy_from_slice(&mss.to_be_bytes());
        t[27] = OPT_END;
        let sum = tcp_checksum_v4(&p);
        p[36..38].copy_from_slice(&sum.to_be_bytes());
        p
    }

    fn mss_of(p: &[u8]) -> u16 {
        u16::from_be_bytes([p[20 + 25], p[20 + 26]])
    }

    #[test]
    fn lowers_a_large_mss_and_keeps_the_checksum_valid() {
        for flags in [SYN, SYN | 0x10] {
            let mut p = syn_v4(1460, flags);
            assert!(clamp(&mut p, 1420));
            assert_eq!(mss_of(&p), 1380);
            let stored = u16::from_be_bytes([p[36], p[37]]);
            assert_eq!(
                stored,
                tcp_checksum_v4(&p),
                "incremental update matches a full recompute"
            );
        }
    }

    #[test]
    fn aligned_mss_option_also_keeps_the_checksum_valid() {
        let mut p = syn_v4(1460, SYN);
        // Move MSS to offset 20 (the common layout): MSS, NOP, NOP, NOP, NOP, END.
        p[40..48].copy_from_slice(&[OPT_MSS, 4, 0x05, 0xb4, OPT_NOP, OPT_NOP, OPT_NOP, OPT_END]);
        p[36..38].fill(0);
        let sum = tcp_checksum_v4(&p);
        p[36..38].copy_from_slice(&sum.to_be_bytes());
        assert!(clamp(&mut p, 1420));
        assert_eq!(u16::from_be_bytes([p[42], p[43]]), 1380);
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), tcp_checksum_v4(&p));
    }

    #[test]
    fn leaves_small_mss_non_syn_and_junk_alone() {
        let mut p = syn_v4(1200, SYN);
        let before = p.clone();
        assert!(!clamp(&mut p, 1420));
        assert_eq!(p, before);

        let mut ack = syn_v4(1460, 0x10);
        assert!(!clamp(&mut ack, 1420));

        let mut frag = syn_v4(1460, SYN);
        frag[6] = 0x20; // more fragments, offset 0: still the first fragment
        frag[7] = 1; // offset 8 bytes: not the first
        assert!(!clamp(&mut frag, 1420));

        for len in 0..48 {
            let mut cut = syn_v4(1460, SYN)[..len].to_vec();
            let _ = clamp(&mut cut, 1420);
        }
        let mut bad_len = syn_v4(1460, SYN);
        bad_len[20 + 24] = 0; // option length 0 must not loop forever
        assert!(!clamp(&mut bad_len, 1420));
    }

    #[test]
    fn ipv6_syn_is_clamped_to_mtu_minus_60() {
        let mut p = vec![0u8; 40 + 24];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&24u16.to_be_bytes());
        p[6] = TCP;
        let t = &mut p[40..];
        t[12] = 6 << 4;
        t[13] = SYN;
        t[20..24].copy_from_slice(&[OPT_MSS, 4, 0x05, 0xa0]); // 1440
        assert!(clamp(&mut p, 1420));
        assert_eq!(u16::from_be_bytes([p[62], p[63]]), 1360);
    }
}
