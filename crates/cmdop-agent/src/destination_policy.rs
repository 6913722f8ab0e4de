//! Where a forward may connect from this machine: the destination policy, checked on the canonical form of
//! the address actually connected to.
//!
//! Order of the checks (first match decides):
//! 1. the configured deny list (`forward_deny`);
//! 2. the configured allow list (`forward_allow`), which can open up anything the built-in rules refuse;
//! 3. built-in refusals: link-local (169.254.0.0/16, fe80::/10, which hold the cloud metadata services),
//!    cloud link services elsewhere (all of AWS's fd00:ec2::/32: metadata at ::254, DNS at ::253, NTP at ::123;
//!    Alibaba's 100.100.100.200), multicast and broadcast;
//! 4. built-in allowances: loopback (127.0.0.0/8, ::1) and private networks (10/8, 172.16/12, 192.168/16,
//!    fc00::/7, 100.64.0.0/10);
//! 5. anything else (the public internet) is refused.
//!
//! Canonical form: an IPv4-mapped or IPv4-compatible IPv6 address is its IPv4 address, and an unspecified
//! address (0.0.0.0, ::), which the kernel treats as "this host", is loopback. Numeric spellings such as
//! `2130706433`, `0x7f.1` or `127.1` are turned into addresses by the resolver before the check, and the
//! address checked is the one the connection goes to, so a name cannot resolve differently twice.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// A network: an address and a prefix length, e.g. `10.0.0.0/8`, `fd00::/8`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

/// Why a network in the configuration could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid network {text:?} in the forward policy: write an address or ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8"
)]
pub struct NetworkParseError {
    text: String,
}

impl FromStr for Network {
    type Err = NetworkParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || NetworkParseError {
            text: text.to_owned(),
        };
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad())?;
        let address = unmapped(address);
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { address, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Network {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(address: Ipv6Addr, prefix: u8) -> Self {
        Self {
            address: IpAddr::V6(address),
            prefix,
        }
    }

    /// Whether `address` (already canonical) lies in this network.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Refused unless explicitly allowed: link-local (cloud metadata lives there), other metadata addresses,
/// multicast and broadcast.
const BUILT_IN_DENY: [Network; 7] = [
    Network::v4(169, 254, 0, 0, 16),
    Network::v4(100, 100, 100, 200, 32),
    Network::v4(224, 0, 0, 0, 4),
    Network::v4(255, 255, 255, 255, 32),
    Network::v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    // The whole /32, inside fc00::/7 which is otherwise allowed: AWS puts every link service there.
    Network::v6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0), 32),
    Network::v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// Allowed by default: loopback and private networks.
const BUILT_IN_ALLOW: [Network; 7] = [
    Network::v4(127, 0, 0, 0, 8),
    Network::v4(10, 0, 0, 0, 8),
    Network::v4(172, 16, 0, 0, 12),
    Network::v4(192, 168, 0, 0, 16),
    Network::v4(100, 64, 0, 0, 10),
    Network::v6(Ipv6Addr::LOCALHOST, 128),
    Network::v6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
];

/// The agent's destination policy for forwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    /// Configured refusals, checked first.
    pub deny: Vec<Network>,
    /// Configured allowances, checked next.
    pub allow: Vec<Network>,
}

/// The policy's answer for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Connect to this (canonical) address.
    Allowed(SocketAddr),
    /// Refused, with the rule that decided.
    Refused(&'static str),
}

impl DestinationPolicy {
    /// Builds a policy from configured texts, naming the first bad entry.
    pub fn from_lists(deny: &[String], allow: &[String]) -> Result<Self, NetworkParseError> {
        Ok(Self {
            deny: deny.iter().map(|n| n.parse()).collect::<Result<_, _>>()?,
            allow: allow.iter().map(|n| n.parse()).collect::<Result<_, _>>()?,
        })
    }

    /// Checks one resolved address; the answer carries the canonical address to connect to.
    pub fn check(&self, address: SocketAddr) -> Verdict {
        let ip = canonical(address.ip());
        let target = SocketAddr::new(ip, address.port());
        if self.deny.iter().any(|n| n.contains(ip)) {
            Verdict::Refused("the agent's forward_deny list")
        } else if self.allow.iter().any(|n| n.contains(ip)) {
            Verdict::Allowed(target)
        } else if BUILT_IN_DENY.iter().any(|n| n.contains(ip)) {
            Verdict::Refused(
                "link-local, metadata, multicast and broadcast addresses are refused unless forward_allow names them",
            )
        } else if BUILT_IN_ALLOW.iter().any(|n| n.contains(ip)) {
            Verdict::Allowed(target)
        } else {
            Verdict::Refused(
                "only loopback and private networks are allowed unless forward_allow names the address",
            )
        }
    }
}

/// The canonical form of an address: IPv4-mapped and IPv4-compatible IPv6 addresses become IPv4, and an
/// unspecified address (which reaches this host) becomes loopback.
pub fn canonical(address: IpAddr) -> IpAddr {
    match unmapped(address) {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// An IPv4-mapped or IPv4-compatible IPv6 address as IPv4; anything else unchanged.
fn unmapped(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            // IPv4-compatible (::a.b.c.d, deprecated) also reaches the IPv4 address on some stacks; `::` and
            // `::1` are not IPv4 addresses.
            None if v6.segments()[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() => {
                v6.to_ipv4().map_or(IpAddr::V6(v6), IpAddr::V4)
            }
            None => IpAddr::V6(v6),
        },
        IpAddr::V4(v4) => IpAddr::V4(v4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(policy: &DestinationPolicy, address: &str) -> Verdict {
        policy.check(SocketAddr::new(address.parse().unwrap(), 80))
    }

    fn allowed(policy: &DestinationPolicy, address: &str) -> bool {
        matches!(verdict(policy, address), Verdict::Allowed(_))
    }

    #[test]
    fn defaults_allow_loopback_and_private_and_refuse_metadata_and_public() {
        let policy = DestinationPolicy::default();
        for ok in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "fd12::1",
            "100.64.0.1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(allowed(&policy, ok), "{ok} should be allowed");
        }
        for refused in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            // All of AWS's link services live in fd00:ec2::/32, not just the metadata address: the DNS
            // resolver (::253), NTP (::123) and whatever comes next.
            "fd00:ec2::253",
            "fd00:ec2::123",
            "fd00:ec2::1",
            "fd00:ec2:ffff:ffff::ffff",
            "::ffff:169.254.170.2",
            "100.100.100.200",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "8.8.8.8",
            "172.32.0.1",
            "2001:db8::1",
        ] {
            assert!(!allowed(&policy, refused), "{refused} should be refused");
        }
    }

    #[test]
    fn unspecified_and_mapped_addresses_are_connected_in_canonical_form() {
        let policy = DestinationPolicy::default();
        assert_eq!(
            verdict(&policy, "0.0.0.0"),
            Verdict::Allowed("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            verdict(&policy, "::ffff:10.0.0.1"),
            Verdict::Allowed("10.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn configured_lists_come_first_deny_before_allow() {
        let policy = DestinationPolicy::from_lists(
            &["127.0.0.0/8".into(), "10.9.0.0/16".into()],
            &[
                "169.254.10.0/24".into(),
                "10.0.0.0/8".into(),
                "8.8.8.8".into(),
            ],
        )
        .unwrap();
        assert!(!allowed(&policy, "127.0.0.1"));
        assert!(!allowed(&policy, "::ffff:127.0.0.1"));
        assert!(!allowed(&policy, "0.0.0.0"), "0.0.0.0 is loopback");
        assert!(!allowed(&policy, "10.9.1.1"));
        assert!(allowed(&policy, "10.8.1.1"));
        assert!(allowed(&policy, "169.254.10.7"));
        assert!(!allowed(&policy, "169.254.169.254"));
        assert!(allowed(&policy, "8.8.8.8"));
        assert!(!allowed(&policy, "8.8.4.4"));
    }

    #[test]
    fn networks_parse_and_bad_ones_name_themselves() {
        assert_eq!(
            "10.0.0.0/8".parse::<Network>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "[::ffff:1.2.3.4]".parse::<Network>().unwrap().to_string(),
            "1.2.3.4/32"
        );
        assert_eq!("0.0.0.0/0".parse::<Network>().unwrap().prefix, 0);
        assert!(
            "0.0.0.0/0"
                .parse::<Network>()
                .unwrap()
                .contains("9.9.9.9".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "fe80::/129", "example.com", "10.0.0.0/x", ""] {
            let err = bad.parse::<Network>().unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("ADDRESS/PREFIX"), "{err}");
        }
    }
}
