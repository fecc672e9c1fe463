//! Netlink attributes as values: a tree of typed leaves and nests that emits itself
//! through netlink-packet-core's [`Nla`], and the readers for the leaves of a reply.
//!
//! IPVS and ipset disagree on byte order: IPVS takes host-order integers except ports
//! and IPv4 netmasks (network order, unflagged); ipset wants every integer in network
//! order *and* flagged with `NLA_F_NET_BYTEORDER`, and every nest flagged with
//! `NLA_F_NESTED`, or it answers `IPSET_ERR_PROTOCOL`. The constructors name which.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLA_F_NET_BYTEORDER, Nla, NlaBuffer, NlasIterator,
};

/// One attribute: its type (with the `NLA_F_*` flags it is sent with) and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    kind: u16,
    value: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Bytes(Vec<u8>),
    Nested(Vec<Attr>),
}

impl Attr {
    /// Raw bytes (addresses, structs).
    pub fn bytes(kind: u16, value: impl Into<Vec<u8>>) -> Attr {
        Attr {
            kind,
            value: Value::Bytes(value.into()),
        }
    }

    /// A `u8`.
    pub fn u8(kind: u16, value: u8) -> Attr {
        Attr::bytes(kind, [value])
    }

    /// A host-order `u16`.
    pub fn u16(kind: u16, value: u16) -> Attr {
        Attr::bytes(kind, value.to_ne_bytes())
    }

    /// A host-order `u32`.
    pub fn u32(kind: u16, value: u32) -> Attr {
        Attr::bytes(kind, value.to_ne_bytes())
    }

    /// A network-order `u16` without the byte-order flag (IPVS ports).
    pub fn be16(kind: u16, value: u16) -> Attr {
        Attr::bytes(kind, value.to_be_bytes())
    }

    /// A network-order `u16` flagged `NLA_F_NET_BYTEORDER` (ipset).
    pub fn net_u16(kind: u16, value: u16) -> Attr {
        Attr::bytes(kind | NLA_F_NET_BYTEORDER, value.to_be_bytes())
    }

    /// A network-order `u32` flagged `NLA_F_NET_BYTEORDER` (ipset).
    pub fn net_u32(kind: u16, value: u32) -> Attr {
        Attr::bytes(kind | NLA_F_NET_BYTEORDER, value.to_be_bytes())
    }

    /// A NUL-terminated string.
    pub fn string(kind: u16, value: &str) -> Attr {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        Attr::bytes(kind, bytes)
    }

    /// A nest flagged `NLA_F_NESTED` (IPVS parses nests without looking at the flag,
    /// ipset requires it).
    pub fn nested(kind: u16, attrs: Vec<Attr>) -> Attr {
        Attr {
            kind: kind | NLA_F_NESTED,
            value: Value::Nested(attrs),
        }
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match &self.value {
            Value::Bytes(b) => b.len(),
            Value::Nested(attrs) => attrs.as_slice().buffer_len(),
        }
    }

    // Carries the flags: the default `is_nested`/`is_network_byteorder` read them here.
    fn kind(&self) -> u16 {
        self.kind
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match &self.value {
            Value::Bytes(b) => buffer[..b.len()].copy_from_slice(b),
            Value::Nested(attrs) => attrs.as_slice().emit(buffer),
        }
    }
}

/// Emits attributes into a fresh buffer.
pub fn emit_all(attrs: &[Attr]) -> Vec<u8> {
    let mut buf = vec![0; attrs.buffer_len()];
    attrs.emit(&mut buf);
    buf
}

/// The attributes of a message body or of a nest's value.
pub fn iter(buf: &[u8]) -> NlasIterator<&[u8]> {
    NlasIterator::new(buf)
}

/// A parsed attribute of a reply.
pub type Nlattr<'a> = NlaBuffer<&'a [u8]>;

fn exact<const N: usize>(nla: &Nlattr<'_>) -> Result<[u8; N], DecodeError> {
    nla.value()
        .get(..N)
        .filter(|_| nla.value().len() == N)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| {
            DecodeError::from(format!(
                "attribute {} has {} bytes, expected {N}",
                nla.kind(),
                nla.value().len()
            ))
        })
}

/// A `u8` leaf.
pub fn get_u8(nla: &Nlattr<'_>) -> Result<u8, DecodeError> {
    exact::<1>(nla).map(|[b]| b)
}

/// A host-order `u16` leaf.
pub fn get_u16(nla: &Nlattr<'_>) -> Result<u16, DecodeError> {
    exact(nla).map(u16::from_ne_bytes)
}

/// A network-order `u16` leaf.
pub fn get_be16(nla: &Nlattr<'_>) -> Result<u16, DecodeError> {
    exact(nla).map(u16::from_be_bytes)
}

/// A host-order `u32` leaf.
pub fn get_u32(nla: &Nlattr<'_>) -> Result<u32, DecodeError> {
    exact(nla).map(u32::from_ne_bytes)
}

/// A network-order `u32` leaf.
pub fn get_be32(nla: &Nlattr<'_>) -> Result<u32, DecodeError> {
    exact(nla).map(u32::from_be_bytes)
}

/// A host-order `u64` leaf.
pub fn get_u64(nla: &Nlattr<'_>) -> Result<u64, DecodeError> {
    exact(nla).map(u64::from_ne_bytes)
}

/// A network-order `u64` leaf.
pub fn get_be64(nla: &Nlattr<'_>) -> Result<u64, DecodeError> {
    exact(nla).map(u64::from_be_bytes)
}

/// A string leaf, NUL-terminated or not.
pub fn get_string(nla: &Nlattr<'_>) -> Result<String, DecodeError> {
    let value = nla.value();
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8(value[..end].to_vec()).map_err(DecodeError::from)
}

/// An address of `ipv6` or IPv4 width from an attribute's value. IPVS sends a whole
/// `union nf_inet_addr` (16 bytes) even for IPv4, so an IPv4 address is its first
/// four bytes.
pub fn addr_from(value: &[u8], ipv6: bool) -> Result<IpAddr, DecodeError> {
    if ipv6 {
        let octets: [u8; 16] = value
            .get(..16)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| DecodeError::invalid_ip_address(value.len()))?;
        Ok(IpAddr::V6(Ipv6Addr::from(octets)))
    } else {
        let octets: [u8; 4] = value
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| DecodeError::invalid_ip_address(value.len()))?;
        Ok(IpAddr::V4(Ipv4Addr::from(octets)))
    }
}

/// The octets of an address, 4 or 16 of them.
pub fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nest_is_flagged_and_its_leaves_padded() {
        let bytes = emit_all(&[Attr::nested(
            7,
            vec![Attr::net_u16(4, 80), Attr::string(26, "ab")],
        )]);
        #[rustfmt::skip]
        let expected = [
            20, 0, 0x07, 0x80,        // nest, len 20, type 7 | NLA_F_NESTED
            6, 0, 0x04, 0x40, 0, 80,  // len 6, type 4 | NLA_F_NET_BYTEORDER, be16 80
            0, 0,                     // padding
            7, 0, 26, 0, b'a', b'b', 0, // len 7, type 26, "ab\0"
            0,                        // padding
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn leaves_of_the_wrong_width_are_refused() {
        let buf = emit_all(&[Attr::u16(1, 5)]);
        let nla = iter(&buf).next().and_then(Result::ok);
        let Some(nla) = nla else {
            panic!("no attribute in {buf:?}");
        };
        assert_eq!(get_u16(&nla).ok(), Some(5));
        assert!(get_u32(&nla).is_err());
    }
}
