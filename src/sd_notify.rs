//! systemd readiness notification (sd_notify protocol): a datagram to `$NOTIFY_SOCKET`.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd with Type=notify) every call is a no-op.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. "READY=1") to systemd. Returns whether a socket was configured.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the socket named like `$NOTIFY_SOCKET` (a path, or `@name` for the
/// abstract namespace, see sd_notify(3)).
pub fn notify_to(socket_name: &OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let addr = match socket_name.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket_name)?,
    };
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// `notify`, logging failures instead of returning them: readiness is best effort.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("cannot notify systemd ({state:?}): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        notify_to(path.as_os_str(), "READY=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("consortium-dns-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").expect("sent");
        let n = listener.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
