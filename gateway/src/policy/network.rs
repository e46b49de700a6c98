//! IP networks as operators write them: a CIDR or a bare address (a host route).

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network(pub IpNet);

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(net) = s.parse::<IpNet>() {
            // Store the canonical network address so 10.1.2.3/8 and 10.0.0.0/8 are one key.
            return Ok(Network(net.trunc()));
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Network(IpNet::from(addr)));
        }
        Err(format!("{s:?} is not an IP network"))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        assert_eq!(
            "203.0.113.0/24".parse::<Network>().unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            "203.0.113.9/24".parse::<Network>().unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            "203.0.113.9".parse::<Network>().unwrap().to_string(),
            "203.0.113.9/32"
        );
        assert_eq!(
            "2001:db8:1::10".parse::<Network>().unwrap().to_string(),
            "2001:db8:1::10/128"
        );
        assert_eq!(
            "10.0.0.300/8".parse::<Network>().unwrap_err(),
            "\"10.0.0.300/8\" is not an IP network"
        );
    }
}
