//! The one place with `unsafe`: a socket option no safe wrapper offers.

use std::io;
use std::os::fd::AsRawFd as _;

/// `SO_NETNS_COOKIE` (Linux 5.14; the same number on every architecture but mips, sparc and
/// parisc, which Isthmus does not build for).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace, as `bpf_get_netns_cookie` returns
/// it inside the socket programs.
pub fn netns_cookie() -> io::Result<u64> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `socket` for the whole call; `cookie` and `len`
    // are valid, writable and sized as the option requires (a u64), and the kernel writes at
    // most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<u64>() {
        return Err(io::Error::other(
            "SO_NETNS_COOKIE returned an unexpected length",
        ));
    }
    Ok(cookie)
}
