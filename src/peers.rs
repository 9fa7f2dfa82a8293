//! The other servers a zone deals with: the networks (and keys) allowed to transfer it, and
//! the secondaries to NOTIFY. Plain data with address matching; `config` builds it, the
//! snapshot carries it, `transfer` enforces it.

use std::net::{IpAddr, SocketAddr};

use crate::zone::name::Name;

/// A network allowed to transfer a zone, and the key it must sign with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferAcl {
    pub network: IpAddr,
    pub prefix: u8,
    pub key: Option<Name>,
}

impl TransferAcl {
    /// True when `client` lies in the network.
    pub fn contains(&self, client: IpAddr) -> bool {
        match (self.network, client) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => net.to_ipv4_mapped() == Some(ip) && self.prefix == 128,
            _ => false,
        }
    }
}

/// A secondary to notify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub address: SocketAddr,
    pub key: Option<Name>,
    /// The local address NOTIFY is sent from; the system's choice when unset.
    pub source: Option<IpAddr>,
}

/// Who may transfer one zone and whom to notify of its changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZonePeers {
    pub allow_transfer: Vec<TransferAcl>,
    pub notify: Vec<NotifyTarget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_matching() {
        let acl = TransferAcl {
            network: "192.0.2.0".parse().expect("ip"),
            prefix: 24,
            key: None,
        };
        assert!(acl.contains("192.0.2.77".parse().expect("ip")));
        assert!(!acl.contains("192.0.3.1".parse().expect("ip")));
        assert!(!acl.contains("2001:db8::1".parse().expect("ip")));
        let host = TransferAcl {
            network: "2001:db8::5".parse().expect("ip"),
            prefix: 128,
            key: None,
        };
        assert!(host.contains("2001:db8::5".parse().expect("ip")));
        assert!(!host.contains("2001:db8::6".parse().expect("ip")));
    }
}
