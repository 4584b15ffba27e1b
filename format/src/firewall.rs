//! A VM's `firewall.xml` and the Admin API rule lines it becomes (SPEC.md FW-1 … FW-4).
//!
//! The verifier converts the authenticated file of either generation (R3's
//! `<QubesFirewallRules policy=…>` and R4's `<firewall><rules><rule><properties>`) into
//! [`Rule`]s and sends their canonical lines ([`Rule::line`]); the privileged restore only
//! re-parses lines with [`Rule::parse_line`], which accepts exactly the canonical form, so
//! a line can never carry a second rule or an option qubesd would read differently.

use crate::error::{Error, Result};
use crate::limits::{MAX_FIREWALL_COMMENT_LEN, MAX_FIREWALL_RULES, MAX_FIREWALL_RULE_LEN};
use crate::qubes_xml::{dom, truncate};

/// FW-1: what a rule does with matching traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
}

/// FW-1: the protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// FW-1: a destination: an IPv4 or IPv6 network (address and prefix length, as qubesd
/// writes them: `dst4=10.0.0.0/8`) or a DNS name (`dsthost=example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    V4(std::net::Ipv4Addr, u8),
    V6(std::net::Ipv6Addr, u8),
    Name(String),
}

/// One Admin API firewall rule (FW-1), in qubesadmin's field order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub proto: Option<Proto>,
    pub dsthost: Option<Host>,
    /// Inclusive port range (0 … 65535), TCP or UDP only.
    pub dstports: Option<(u16, u16)>,
    /// ICMP only.
    pub icmptype: Option<u8>,
    /// The only special target is DNS.
    pub dns: bool,
    /// Seconds since the epoch.
    pub expire: Option<u64>,
    /// Printable ASCII, ≤ LIM-56 bytes; always last on the line (it may hold spaces).
    pub comment: Option<String>,
}

impl Rule {
    fn new(action: Action) -> Rule {
        Rule {
            action,
            proto: None,
            dsthost: None,
            dstports: None,
            icmptype: None,
            dns: false,
            expire: None,
            comment: None,
        }
    }

    /// FW-1: the canonical Admin API line (without its newline): `action=`, `proto=`,
    /// the destination (`dst4=`/`dst6=`/`dsthost=`; a /0 network is omitted, it limits
    /// nothing), `dstports=N-M`, `icmptype=`, `specialtarget=dns`, `expire=`, `comment=`.
    pub fn line(&self) -> String {
        let mut parts = vec![format!(
            "action={}",
            match self.action {
                Action::Accept => "accept",
                Action::Drop => "drop",
            }
        )];
        if let Some(p) = self.proto {
            parts.push(format!("proto={}", proto_name(p)));
        }
        match &self.dsthost {
            Some(Host::V4(a, len)) if *len > 0 => parts.push(format!("dst4={a}/{len}")),
            Some(Host::V6(a, len)) if *len > 0 => parts.push(format!("dst6={a}/{len}")),
            Some(Host::Name(n)) => parts.push(format!("dsthost={n}")),
            _ => {}
        }
        if let Some((lo, hi)) = self.dstports {
            parts.push(format!("dstports={lo}-{hi}"));
        }
        if let Some(t) = self.icmptype {
            parts.push(format!("icmptype={t}"));
        }
        if self.dns {
            parts.push("specialtarget=dns".to_owned());
        }
        if let Some(e) = self.expire {
            parts.push(format!("expire={e}"));
        }
        if let Some(c) = &self.comment {
            parts.push(format!("comment={c}"));
        }
        parts.join(" ")
    }

    /// FW-2: parses a line the way [`Rule::line`] writes it, and only that way: known
    /// options in canonical order, each once, with valid values, consistent (ports only
    /// for TCP/UDP, an ICMP type only for ICMP) and at most LIM-55 bytes. Anything else is
    /// Malformed.
    pub fn parse_line(untrusted: &str) -> Result<Rule> {
        Rule::parse_options(untrusted, true)
    }

    /// FW-5: a line of qubesd's `admin.vm.firewall.Get` reply, which lists the options in
    /// qubesd's own order (`action=drop expire=… dst4=… proto=udp`), each once, the
    /// comment last. Checked as [`Rule::parse_line`] checks, but in any order and with
    /// qubesd's spellings (`dst4=0.0.0.0/0`, `dstports=443-443`).
    pub fn parse_qubesd_line(line: &str) -> Result<Rule> {
        Rule::parse_options(line, false)
    }

    fn parse_options(untrusted: &str, canonical: bool) -> Result<Rule> {
        let bad = |why: &str| {
            Error::malformed(format!(
                "firewall rule {:?}: {why} (FW-2)",
                truncate(untrusted)
            ))
        };
        if untrusted.len() > MAX_FIREWALL_RULE_LEN {
            return Err(Error::limit(format!(
                "firewall rule {:?}… longer than LIM-55 (FW-2)",
                truncate(untrusted)
            )));
        }
        let (opts, comment) = match untrusted.split_once(" comment=") {
            Some((o, c)) => (o, Some(c)),
            None => (untrusted, None),
        };
        let mut rule: Option<Rule> = None;
        let mut last = 0usize;
        let mut seen = [false; 8];
        let mut options: Vec<&str> = opts.split(' ').collect();
        if !canonical {
            // qubesd's order differs; the action must still come first to build the rule.
            options.sort_by_key(|o| !o.starts_with("action="));
        }
        for opt in options {
            let Some((key, value)) = opt.split_once('=') else {
                return Err(bad("an option without `=`"));
            };
            let rank = match key {
                "action" => 1,
                "proto" => 2,
                "dst4" | "dst6" | "dsthost" => 3,
                "dstports" => 4,
                "icmptype" => 5,
                "specialtarget" => 6,
                "expire" => 7,
                _ => return Err(bad("an unknown option")),
            };
            if (canonical && rank <= last) || seen[rank] {
                return Err(bad("options repeated or out of order"));
            }
            seen[rank] = true;
            last = rank;
            if rank == 1 {
                rule = Some(Rule::new(match value {
                    "accept" => Action::Accept,
                    "drop" => Action::Drop,
                    _ => return Err(bad("an unknown action")),
                }));
                continue;
            }
            let Some(r) = rule.as_mut() else {
                return Err(bad("no action first"));
            };
            match key {
                "proto" => r.proto = Some(parse_proto(value).ok_or_else(|| bad("proto"))?),
                "dst4" | "dst6" | "dsthost" => {
                    let host = parse_host(value).ok_or_else(|| bad("destination"))?;
                    let fits = match (key, &host) {
                        ("dst4", Host::V4(_, len)) | ("dst6", Host::V6(_, len)) => {
                            *len > 0 || !canonical
                        }
                        ("dsthost", Host::Name(_)) => true,
                        // qubesd names every destination `dsthost=` in its XML only.
                        ("dsthost", _) => !canonical,
                        _ => false,
                    };
                    if !fits {
                        return Err(bad("destination of the wrong kind"));
                    }
                    r.dsthost = Some(host);
                }
                "dstports" => {
                    let (lo, hi) = match value.split_once('-') {
                        Some(range) => range,
                        None if !canonical => (value, value),
                        None => return Err(bad("dstports")),
                    };
                    r.dstports = Some(port_range(lo, hi).ok_or_else(|| bad("dstports"))?);
                }
                "icmptype" => r.icmptype = Some(decimal(value).ok_or_else(|| bad("icmptype"))?),
                "specialtarget" if value == "dns" => r.dns = true,
                "expire" => r.expire = Some(decimal(value).ok_or_else(|| bad("expire"))?),
                _ => return Err(bad("an unknown value")),
            }
        }
        let mut rule = rule.ok_or_else(|| bad("no action"))?;
        if let Some(c) = comment {
            rule.comment = Some(c.to_owned());
        }
        rule.check().map_err(&bad)?;
        if canonical && rule.line() != untrusted {
            return Err(bad("not in canonical form"));
        }
        Ok(rule)
    }

    /// FW-1: the consistency qubesd requires, and printable-ASCII comments.
    fn check(&self) -> std::result::Result<(), &'static str> {
        if self.dstports.is_some() && !matches!(self.proto, Some(Proto::Tcp | Proto::Udp)) {
            return Err("ports without tcp or udp");
        }
        if self.icmptype.is_some() && self.proto != Some(Proto::Icmp) {
            return Err("an ICMP type without proto=icmp");
        }
        if let Some(c) = &self.comment {
            if c.is_empty()
                || c.len() > MAX_FIREWALL_COMMENT_LEN
                || !c.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return Err("a comment that is empty, too long (LIM-56) or not printable ASCII");
            }
        }
        if self.line().len() > MAX_FIREWALL_RULE_LEN {
            return Err("too long (LIM-55)");
        }
        Ok(())
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Icmp => "icmp",
    }
}

fn parse_proto(s: &str) -> Option<Proto> {
    match s {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        "icmp" => Some(Proto::Icmp),
        _ => None,
    }
}

/// Plain ASCII decimal without sign or leading `+`.
fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn port_range(lo: &str, hi: &str) -> Option<(u16, u16)> {
    let (lo, hi): (u16, u16) = (decimal(lo)?, decimal(hi)?);
    (lo <= hi).then_some((lo, hi))
}

/// FW-1: `a.b.c.d[/n]`, an IPv6 address `[/n]` (bare addresses are single hosts), or a
/// DNS name of `[a-z0-9._-]` (1 … 253 bytes).
fn parse_host(s: &str) -> Option<Host> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(decimal::<u8>(l)?)),
        None => (s, None),
    };
    if let Ok(a) = addr.parse::<std::net::Ipv4Addr>() {
        let len = len.unwrap_or(32);
        return (len <= 32).then_some(Host::V4(a, len));
    }
    if let Ok(a) = addr.parse::<std::net::Ipv6Addr>() {
        let len = len.unwrap_or(128);
        return (len <= 128).then_some(Host::V6(a, len));
    }
    let name_ok = len.is_none()
        && (1..=253).contains(&addr.len())
        && addr.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        });
    name_ok.then(|| Host::Name(addr.to_owned()))
}

/// FW-5: an R4 `firewall.xml` (version 2) holding `rules`, as qubesd saves one: no
/// declaration, no policy element (R4's policy is always drop), each rule's options in
/// qubesd's order (`action`, `comment`, `expire`, `dsthost`, `proto`, `specialtarget`,
/// `dstports`, `icmptype`), every destination named `dsthost` with its prefix length, one
/// port as `443`. [`parse_xml`] reads it back to the same rules.
pub fn write_xml(rules: &[Rule]) -> Vec<u8> {
    let mut out = b"<firewall version=\"2\">\n  <rules>\n".to_vec();
    for r in rules {
        out.extend_from_slice(b"    <rule>\n      <properties>\n");
        let mut prop = |name: &str, value: &str| {
            out.extend_from_slice(b"        <property name=\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\">");
            crate::qubes_xml::escape(&mut out, value);
            out.extend_from_slice(b"</property>\n");
        };
        prop(
            "action",
            match r.action {
                Action::Accept => "accept",
                Action::Drop => "drop",
            },
        );
        if let Some(c) = &r.comment {
            prop("comment", c);
        }
        if let Some(e) = r.expire {
            prop("expire", &e.to_string());
        }
        match &r.dsthost {
            Some(Host::V4(a, len)) => prop("dsthost", &format!("{a}/{len}")),
            Some(Host::V6(a, len)) => prop("dsthost", &format!("{a}/{len}")),
            Some(Host::Name(n)) => prop("dsthost", n),
            None => {}
        }
        if let Some(p) = r.proto {
            prop("proto", proto_name(p));
        }
        if r.dns {
            prop("specialtarget", "dns");
        }
        match r.dstports {
            Some((lo, hi)) if lo == hi => prop("dstports", &lo.to_string()),
            Some((lo, hi)) => prop("dstports", &format!("{lo}-{hi}")),
            None => {}
        }
        if let Some(t) = r.icmptype {
            prop("icmptype", &t.to_string());
        }
        out.extend_from_slice(b"      </properties>\n    </rule>\n");
    }
    out.extend_from_slice(b"  </rules>\n</firewall>\n");
    out
}

/// FW-3, FW-4: the rules of a `firewall.xml` of either generation, at most LIM-54.
pub fn parse_xml(untrusted: &[u8]) -> Result<Vec<Rule>> {
    let root = dom::parse(untrusted).map_err(|e| e.context("firewall.xml"))?;
    let rules = match root.name.as_str() {
        "QubesFirewallRules" => r3_rules(&root)?,
        "firewall" => r4_rules(&root)?,
        other => {
            return Err(Error::malformed(format!(
                "firewall.xml: unknown root element <{}>",
                truncate(other)
            )))
        }
    };
    if rules.len() > MAX_FIREWALL_RULES {
        return Err(Error::limit(format!(
            "firewall.xml: more than LIM-54 ({MAX_FIREWALL_RULES}) rules"
        )));
    }
    for r in &rules {
        r.check().map_err(|why| {
            Error::malformed(format!(
                "firewall.xml: rule {:?}: {why}",
                truncate(&r.line())
            ))
        })?;
    }
    Ok(rules)
}

/// FW-3: R3 `<QubesFirewallRules policy="allow|deny" dns= icmp=>` with `<server address=
/// netmask= proto= port= toport= expire=>` children becomes, in this order: a DNS rule and
/// an ICMP rule (each accepting when its attribute, or else the policy, is `allow`), one
/// rule per child with the action opposite to the policy, and a final rule applying the
/// policy. A port without a protocol means TCP; `any` means no protocol.
fn r3_rules(root: &dom::Node) -> Result<Vec<Rule>> {
    let policy = root.attr("policy");
    let accept_by_default = match policy {
        Some("allow") => true,
        Some("deny") => false,
        _ => {
            return Err(Error::malformed(
                "firewall.xml: R3 policy is neither allow nor deny",
            ))
        }
    };
    let action_of = |key: &str| match root.attr(key).or(policy) {
        Some("allow") => Action::Accept,
        _ => Action::Drop,
    };
    let mut rules = Vec::new();
    let mut dns = Rule::new(action_of("dns"));
    dns.dns = true;
    rules.push(dns);
    let mut icmp = Rule::new(action_of("icmp"));
    icmp.proto = Some(Proto::Icmp);
    rules.push(icmp);
    let exception = if accept_by_default {
        Action::Drop
    } else {
        Action::Accept
    };
    for (i, node) in root.children.iter().enumerate() {
        let bad = |what: &str| {
            Error::malformed(format!("firewall.xml: R3 rule {}: invalid {what}", i + 1))
        };
        let mut r = Rule::new(exception);
        if let Some(addr) = node.attr("address").filter(|a| !a.is_empty()) {
            let len = match node.attr("netmask") {
                Some(m) => Some(decimal::<u8>(m).ok_or_else(|| bad("netmask"))?),
                None => None,
            };
            let host = match len {
                Some(l) => parse_host(&format!("{addr}/{l}")),
                None => parse_host(addr),
            };
            r.dsthost = Some(host.ok_or_else(|| bad("address"))?);
        }
        let port = node.attr("port").filter(|p| !p.is_empty());
        let toport = node.attr("toport").filter(|p| !p.is_empty());
        r.dstports = match (port, toport) {
            (Some(p), Some(t)) => Some(port_range(p, t).ok_or_else(|| bad("ports"))?),
            (Some(p), None) => Some(port_range(p, p).ok_or_else(|| bad("port"))?),
            (None, _) => None,
        };
        r.proto = match node.attr("proto").filter(|p| !p.is_empty()) {
            None if r.dstports.is_some() => Some(Proto::Tcp),
            None | Some("any") => None,
            Some(p) => Some(parse_proto(p).ok_or_else(|| bad("proto"))?),
        };
        if let Some(e) = node.attr("expire").filter(|e| !e.is_empty()) {
            r.expire = Some(decimal(e).ok_or_else(|| bad("expire"))?);
        }
        rules.push(r);
    }
    rules.push(Rule::new(if accept_by_default {
        Action::Accept
    } else {
        Action::Drop
    }));
    Ok(rules)
}

/// FW-4: R4 `<firewall><rules><rule><properties><property name=…>` with the Admin API
/// option names (`dst4`/`dst6` as `dsthost`); each rule needs an action.
fn r4_rules(root: &dom::Node) -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    for (i, rule) in root
        .children_named("rules")
        .flat_map(|r| r.children_named("rule"))
        .enumerate()
    {
        let bad =
            |what: &str| Error::malformed(format!("firewall.xml: rule {}: invalid {what}", i + 1));
        let props: Vec<(&str, &str)> = rule
            .children_named("properties")
            .flat_map(|p| p.children_named("property"))
            .map(|p| {
                (
                    p.attr("name").unwrap_or(""),
                    p.text.as_deref().unwrap_or(""),
                )
            })
            .collect();
        let get = |name: &str| props.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let mut r = Rule::new(match get("action") {
            Some("accept") => Action::Accept,
            Some("drop") => Action::Drop,
            _ => return Err(bad("or missing action")),
        });
        for (name, value) in &props {
            match *name {
                "action" => {}
                "proto" => r.proto = Some(parse_proto(value).ok_or_else(|| bad("proto"))?),
                "dst4" | "dst6" | "dsthost" => {
                    r.dsthost = Some(parse_host(value).ok_or_else(|| bad("destination"))?)
                }
                "dstports" => {
                    let (lo, hi) = value.split_once('-').unwrap_or((value, value));
                    r.dstports = Some(port_range(lo, hi).ok_or_else(|| bad("dstports"))?);
                }
                "icmptype" => r.icmptype = Some(decimal(value).ok_or_else(|| bad("icmptype"))?),
                "specialtarget" if *value == "dns" => r.dns = true,
                "expire" => r.expire = Some(decimal(value).ok_or_else(|| bad("expire"))?),
                "comment" => r.comment = Some((*value).to_owned()),
                _ => return Err(bad(&format!("option {:?}", truncate(name)))),
            }
        }
        rules.push(r);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FW-5: qubesd's lines (its own option order) → firewall.xml → the same rules.
    #[test]
    fn qubesd_lines_round_trip_through_firewall_xml() {
        let lines = [
            "action=accept specialtarget=dns",
            "action=accept proto=icmp icmptype=8",
            "action=accept dst4=192.168.0.0/24 proto=tcp dstports=80-80",
            "action=accept dsthost=qubes-os.org proto=tcp dstports=443-1024",
            "action=accept expire=1700000000 proto=udp dstports=53-53",
            "action=accept dst6=2001:db8::/64",
            "action=drop dst4=10.1.2.3/32 comment=free text with spaces",
            "action=drop",
        ];
        let rules: Vec<Rule> = lines
            .iter()
            .map(|l| Rule::parse_qubesd_line(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        let xml = write_xml(&rules);
        let text = String::from_utf8(xml.clone()).unwrap();
        assert!(text.contains("<property name=\"dstports\">80</property>"));
        assert!(text.contains("<property name=\"dsthost\">10.1.2.3/32</property>"));
        assert_eq!(parse_xml(&xml).unwrap(), rules);
        // The canonical lines the restore sends are the same rules again.
        for r in &rules {
            assert_eq!(&Rule::parse_line(&r.line()).unwrap(), r);
        }
        // Repeated options and unknown ones are refused in any order.
        for bad in [
            "proto=tcp action=accept proto=udp",
            "action=accept bogus=1",
            "action=accept dstports=80",
            "proto=tcp",
        ] {
            assert!(Rule::parse_qubesd_line(bad).is_err(), "{bad}");
        }
        // qubesd's option order is accepted there, never by the canonical parser.
        assert!(Rule::parse_line("action=drop expire=5 proto=udp").is_err());
        assert!(Rule::parse_qubesd_line("action=drop expire=5 proto=udp").is_ok());
    }

    const R3: &[u8] = br#"<?xml version="1.0"?>
<QubesFirewallRules dns="allow" icmp="allow" policy="deny" yumProxy="allow">
  <server address="192.168.0.0" netmask="24" port="80" proto="tcp" toport="90"/>
  <server address="example.com" port="443"/>
  <server address="10.0.0.1" proto="any"/>
</QubesFirewallRules>"#;

    /// FW-3.
    #[test]
    fn r3_becomes_dns_icmp_exceptions_and_policy() {
        let lines: Vec<String> = parse_xml(R3).unwrap().iter().map(Rule::line).collect();
        assert_eq!(
            lines,
            [
                "action=accept specialtarget=dns",
                "action=accept proto=icmp",
                "action=accept proto=tcp dst4=192.168.0.0/24 dstports=80-90",
                "action=accept proto=tcp dsthost=example.com dstports=443-443",
                "action=accept dst4=10.0.0.1/32",
                "action=drop",
            ]
        );
    }

    /// FW-4, FW-2.
    #[test]
    fn r4_properties_become_lines() {
        let xml = br#"<firewall version="2"><rules>
<rule><properties><property name="action">accept</property><property name="dsthost">qubes-os.org</property></properties></rule>
<rule><properties><property name="action">accept</property><property name="proto">tcp</property><property name="dst4">1.2.3.0/24</property><property name="dstports">443-445</property><property name="comment">web and more</property></properties></rule>
<rule><properties><property name="action">drop</property><property name="proto">icmp</property><property name="icmptype">8</property></properties></rule>
</rules></firewall>"#;
        let lines: Vec<String> = parse_xml(xml).unwrap().iter().map(Rule::line).collect();
        assert_eq!(
            lines,
            [
                "action=accept dsthost=qubes-os.org",
                "action=accept proto=tcp dst4=1.2.3.0/24 dstports=443-445 comment=web and more",
                "action=drop proto=icmp icmptype=8",
            ]
        );
        for l in &lines {
            assert_eq!(&Rule::parse_line(l).unwrap().line(), l);
        }
    }

    #[test]
    fn lines_outside_the_canonical_form_are_refused() {
        for line in [
            "",
            "drop",
            "proto=tcp action=accept",
            "action=accept action=drop",
            "action=accept dstports=80-80",
            "action=accept proto=tcp icmptype=3",
            "action=accept dsthost=EXAMPLE.com",
            "action=accept dst4=1.2.3.4",
            "action=accept dst4=0.0.0.0/0",
            "action=accept dsthost=1.2.3.4/32",
            "action=accept  proto=tcp",
            "action=accept proto=tcp dstports=90-80",
            "action=accept unknown=1",
            "action=accept comment=a\u{7f}b",
            "action=accept comment=",
            "action=accept expire=+5",
        ] {
            assert!(Rule::parse_line(line).is_err(), "{line:?} accepted");
        }
        // A comment may hold what looks like options: it is one field, last.
        let r = Rule::parse_line("action=drop comment=x action=accept").unwrap();
        assert_eq!(r.action, Action::Drop);
        assert_eq!(r.comment.as_deref(), Some("x action=accept"));
    }

    #[test]
    fn bad_firewall_files_are_malformed() {
        for xml in [
            &b"<QubesFirewallRules policy=\"maybe\"/>"[..],
            b"<QubesFirewallRules policy=\"deny\"><server port=\"x\"/></QubesFirewallRules>",
            b"<firewall><rules><rule><properties><property name=\"proto\">tcp</property></properties></rule></rules></firewall>",
            b"<other/>",
        ] {
            assert!(parse_xml(xml).is_err());
        }
    }
}
