//! Decoding of DNS messages (RFC 1035, EDNS per RFC 6891) into the typed,
//! serde-serialisable [`DnsMessage`], on top of `hickory-proto`'s record
//! decoders.
//!
//! Captured payloads are a bounded prefix of the packet, so the decoder is
//! deliberately tolerant past the question section: the header and question
//! must decode, after that every record that fits is kept and the message is
//! marked [`partial`](DnsMessage::partial) where decoding had to stop.
//! Malformed, truncated and adversarial input (compression loops, oversize
//! labels, bogus counts) is an error or a partial message, never a panic;
//! the `fuzz/` crate and the regression corpus in `tests/corpus` check that.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use hickory_proto::op::{Header, MessageType, Query};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use serde::{Deserialize, Serialize};

/// A protocol mnemonic (`A`, `IN`, `QUERY`, `NOERROR` …): borrowed from a
/// static table for every assigned value, owned only for unassigned ones.
pub type Mnemonic = Cow<'static, str>;

/// Answers kept per message; the header's count says how many there were.
pub const MAX_ANSWERS: usize = 32;
/// Questions kept per message (real traffic has exactly one).
pub const MAX_QUESTIONS: usize = 4;
/// Longest rendering of one record's data (TXT and unknown types are cut).
pub const MAX_RDATA_TEXT: usize = 256;

/// Why a DNS message could not be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Fewer than the 12 bytes of a DNS header.
    #[error("DNS message too short for a header: {len} bytes")]
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// The question section is malformed (not merely cut off by the capture).
    #[error("DNS question {index} is malformed: {reason}")]
    Question {
        /// Zero-based index of the question.
        index: usize,
        /// The decoder's message.
        reason: String,
    },
    /// The question section announced by the header was cut off by the capture.
    #[error("DNS message question was not captured")]
    NoQuestion,
    /// A TCP DNS message's two-byte length prefix is missing.
    #[error("TCP DNS segment too short for the length prefix: {len} bytes")]
    NoLengthPrefix {
        /// Bytes available.
        len: usize,
    },
}

/// Header flags. Serialised like `dig` prints them: the set flags' lower-case
/// mnemonics separated by spaces (`"qr aa rd ra"`).
///
/// ```
/// use tapio_collector_dns::DnsFlags;
///
/// let f = DnsFlags { response: true, recursion_desired: true, ..Default::default() };
/// assert_eq!(serde_json::to_string(&f).unwrap(), r#""qr rd""#);
/// assert_eq!(serde_json::from_str::<DnsFlags>(r#""qr rd""#).unwrap(), f);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsFlags {
    /// QR: the message is a response.
    pub response: bool,
    /// AA: authoritative answer.
    pub authoritative: bool,
    /// TC: the message was truncated by the server (retry over TCP).
    pub truncated: bool,
    /// RD: recursion desired.
    pub recursion_desired: bool,
    /// RA: recursion available.
    pub recursion_available: bool,
    /// AD: authentic data (DNSSEC).
    pub authentic_data: bool,
    /// CD: checking disabled (DNSSEC).
    pub checking_disabled: bool,
}

impl DnsFlags {
    pub(crate) fn table(&self) -> [(&'static str, bool); 7] {
        [
            ("qr", self.response),
            ("aa", self.authoritative),
            ("tc", self.truncated),
            ("rd", self.recursion_desired),
            ("ra", self.recursion_available),
            ("ad", self.authentic_data),
            ("cd", self.checking_disabled),
        ]
    }
}

impl Serialize for DnsFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // At most 7 two-letter flags and 6 spaces: 20 bytes, on the stack.
        let mut out = [0u8; 20];
        let mut len = 0;
        for (name, set) in self.table() {
            if set {
                if len > 0 {
                    out[len] = b' ';
                    len += 1;
                }
                out[len..len + 2].copy_from_slice(name.as_bytes());
                len += 2;
            }
        }
        // Only ASCII letters and spaces were written.
        s.serialize_str(std::str::from_utf8(&out[..len]).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for DnsFlags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut f = DnsFlags::default();
        for word in text.split_ascii_whitespace() {
            match word {
                "qr" => f.response = true,
                "aa" => f.authoritative = true,
                "tc" => f.truncated = true,
                "rd" => f.recursion_desired = true,
                "ra" => f.recursion_available = true,
                "ad" => f.authentic_data = true,
                "cd" => f.checking_disabled = true,
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "unknown DNS flag {other:?}"
                    )));
                }
            }
        }
        Ok(f)
    }
}

/// One entry of the question section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQuestion {
    /// Queried name, without the trailing dot (`"."` for the root); bytes
    /// outside printable ASCII are escaped as `\DDD`.
    pub name: String,
    /// Query type mnemonic (`A`, `AAAA`, `TXT`, …; `TYPE<n>` when unknown).
    #[serde(rename = "type")]
    pub qtype: Mnemonic,
    /// Query class mnemonic (`IN`, `CH`, …; `CLASS<n>` when unknown).
    pub class: Mnemonic,
}

/// One resource record of the answer section, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswer {
    /// Owner name (same rendering as [`DnsQuestion::name`]).
    pub name: String,
    /// Record type mnemonic.
    #[serde(rename = "type")]
    pub rtype: Mnemonic,
    /// Time to live in seconds.
    pub ttl: u32,
    /// The record data, summarised: the address for A/AAAA, the target name
    /// for CNAME/PTR/NS, `priority weight port target` for SRV,
    /// `preference exchange` for MX, the strings of a TXT record joined
    /// (cut at [`MAX_RDATA_TEXT`] bytes), `mname rname serial` for SOA.
    pub data: String,
    /// The address of an A or AAAA record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The capture ended inside this record: `data` summarises what was
    /// captured (the first strings of a long TXT record), or is empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// EDNS(0) information from the OPT pseudo-record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsEdns {
    /// Advertised UDP payload size.
    pub udp_payload_size: u16,
    /// EDNS version.
    pub version: u8,
    /// DO bit: DNSSEC records wanted.
    pub dnssec_ok: bool,
    /// Option codes present (e.g. 10 = cookie, 8 = client subnet).
    pub options: Vec<u16>,
}

/// A decoded DNS message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsMessage {
    /// Transaction id.
    pub id: u16,
    /// Opcode mnemonic (`QUERY`, `NOTIFY`, `UPDATE`, …).
    pub opcode: Mnemonic,
    /// Response code number, including the EDNS extended bits.
    pub rcode: u16,
    /// Response code mnemonic (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, `REFUSED`, …).
    pub rcode_name: Mnemonic,
    /// Header flags.
    pub flags: DnsFlags,
    /// Questions (at most [`MAX_QUESTIONS`]).
    pub questions: Vec<DnsQuestion>,
    /// Answers decoded (at most [`MAX_ANSWERS`]; omitted from JSON when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<DnsAnswer>,
    /// Answer records announced by the header (omitted from JSON when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub answer_count: u16,
    /// Authority records announced by the header (omitted from JSON when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub authority_count: u16,
    /// Additional records announced by the header, including OPT (omitted
    /// from JSON when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub additional_count: u16,
    /// EDNS, when an OPT record was decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edns: Option<DnsEdns>,
    /// Length of the whole message on the wire, in bytes.
    pub size: u32,
    /// Not every section could be decoded: the capture ended inside the
    /// message, or a record past the question was malformed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl DnsMessage {
    /// The first question, which every message this crate emits has.
    pub fn question(&self) -> Option<&DnsQuestion> {
        self.questions.first()
    }

    /// Addresses of the A and AAAA answers, in order.
    pub fn answer_ips(&self) -> Vec<IpAddr> {
        self.answers.iter().filter_map(|a| a.ip).collect()
    }

    /// The addresses (with their TTL in seconds) that the answer section
    /// gives for `name`: A/AAAA records owned by `name` or by a name it is
    /// an alias of through a chain of CNAME records in the answer section
    /// (names compare case-insensitively). Records for other names are left
    /// out.
    ///
    pub fn addresses_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (IpAddr, u32)> + 'a {
        // The names `name` stands for: itself and its CNAME targets. At most
        // one per answer record, so the loop ends.
        let mut names: Vec<&str> = vec![name];
        let known = |names: &[&str], n: &str| names.iter().any(|k| k.eq_ignore_ascii_case(n));
        loop {
            let before = names.len();
            for a in &self.answers {
                if a.rtype == "CNAME" && known(&names, &a.name) && !known(&names, &a.data) {
                    names.push(&a.data);
                }
            }
            if names.len() == before {
                break;
            }
        }
        self.answers
            .iter()
            .filter(move |a| a.ip.is_some() && known(&names, &a.name))
            .filter_map(|a| Some((a.ip?, a.ttl)))
    }
}

/// Response code mnemonic per the IANA registry; `RCODE<n>` when unassigned.
///
/// ```
/// assert_eq!(tapio_collector_dns::message::rcode_name(3), "NXDOMAIN");
/// assert_eq!(tapio_collector_dns::message::rcode_name(4000), "RCODE4000");
/// ```
pub fn rcode_name(rcode: u16) -> Mnemonic {
    match rcode_static(rcode) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(format!("RCODE{rcode}")),
    }
}

/// The mnemonic of an assigned response code, without allocating.
pub fn rcode_static(rcode: u16) -> Option<&'static str> {
    Some(match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        11 => "DSOTYPENI",
        16 => "BADVERS",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        _ => return None,
    })
}

/// Record type mnemonic; `TYPE<n>` (RFC 3597) when hickory does not know it.
pub fn type_name(t: RecordType) -> Mnemonic {
    match t {
        RecordType::Unknown(n) => Cow::Owned(format!("TYPE{n}")),
        other => Cow::Borrowed(<&'static str>::from(other)),
    }
}

fn class_name(c: DNSClass) -> Mnemonic {
    Cow::Borrowed(match c {
        DNSClass::IN => "IN",
        DNSClass::CH => "CH",
        DNSClass::HS => "HS",
        DNSClass::NONE => "NONE",
        DNSClass::ANY => "ANY",
        DNSClass::OPT(n) | DNSClass::Unknown(n) => return Cow::Owned(format!("CLASS{n}")),
    })
}

/// Render a name as OpenTelemetry's `dns.question.name` wants it: labels
/// joined by dots, no trailing dot, non-printable bytes as `\DDD`, `\`, `"`
/// and `.` inside a label escaped with a backslash.
///
/// ```
/// use hickory_proto::rr::Name;
/// use tapio_collector_dns::message::render_name;
///
/// assert_eq!(render_name(&Name::from_ascii("www.example.com.").unwrap()), "www.example.com");
/// assert_eq!(render_name(&Name::root()), ".");
/// ```
pub fn render_name(name: &Name) -> String {
    if name.is_root() {
        return ".".to_string();
    }
    let mut out = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        // Fast path: a label of plain printable characters is copied whole.
        if label
            .iter()
            .all(|&b| matches!(b, 0x21..=0x7e) && !matches!(b, b'.' | b'\\' | b'"'))
            && let Ok(text) = std::str::from_utf8(label)
        {
            out.push_str(text);
            continue;
        }
        for &b in label {
            match b {
                b'\t' => out.push_str("\\t"),
                b'\r' => out.push_str("\\r"),
                b'\n' => out.push_str("\\n"),
                b'.' | b'\\' | b'"' => {
                    out.push('\\');
                    out.push(char::from(b));
                }
                0x21..=0x7e => out.push(char::from(b)),
                _ => {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\{b:03}");
                }
            }
        }
    }
    out
}

/// Dotted-quad text of an IPv4 address, as `Display` writes it, without
/// the formatting machinery (several times cheaper).
///
/// ```
/// use std::net::Ipv4Addr;
/// assert_eq!(tapio_collector_dns::message::ipv4_text(Ipv4Addr::new(10, 0, 255, 7)), "10.0.255.7");
/// ```
pub fn ipv4_text(ip: std::net::Ipv4Addr) -> String {
    tapio_core::metadata::ip_text(IpAddr::V4(ip)).into()
}

/// Text of an address as `Display` writes it (IPv4 without the formatter).
pub fn ip_text(ip: IpAddr) -> String {
    tapio_core::metadata::ip_text(ip).into()
}

fn push_lossy_text(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if out.len() >= MAX_RDATA_TEXT {
            return;
        }
        match b {
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
}

fn summarise(data: &RData) -> (String, Option<IpAddr>) {
    match data {
        RData::A(a) => (ipv4_text(a.0), Some(IpAddr::V4(a.0))),
        RData::AAAA(a) => (a.0.to_string(), Some(IpAddr::V6(a.0))),
        RData::CNAME(n) => (render_name(&n.0), None),
        RData::PTR(n) => (render_name(&n.0), None),
        RData::NS(n) => (render_name(&n.0), None),
        RData::SRV(srv) => (
            format!(
                "{} {} {} {}",
                srv.priority,
                srv.weight,
                srv.port,
                render_name(&srv.target)
            ),
            None,
        ),
        RData::MX(mx) => (
            format!("{} {}", mx.preference, render_name(&mx.exchange)),
            None,
        ),
        RData::TXT(txt) => {
            let mut out = String::new();
            for (i, s) in txt.txt_data.iter().enumerate() {
                if i > 0 && out.len() < MAX_RDATA_TEXT {
                    out.push(' ');
                }
                push_lossy_text(&mut out, s);
            }
            (out, None)
        }
        RData::SOA(soa) => (
            format!(
                "{} {} {}",
                render_name(&soa.mname),
                render_name(&soa.rname),
                soa.serial
            ),
            None,
        ),
        other => {
            // Not `to_string()`: some of hickory's Display impls return an
            // error (an OPT record in the answer section, found by the
            // fuzzer), which `to_string` turns into a panic.
            let mut text = String::new();
            let _ = write!(text, "{other}");
            let mut out = String::new();
            push_lossy_text(&mut out, text.as_bytes());
            (out, None)
        }
    }
}

fn opcode_name(raw: u8) -> Mnemonic {
    Cow::Borrowed(match raw {
        0 => "QUERY",
        1 => "IQUERY",
        2 => "STATUS",
        4 => "NOTIFY",
        5 => "UPDATE",
        6 => "DSO",
        n => return Cow::Owned(format!("OPCODE{n}")),
    })
}

/// Decode one DNS message from `bytes`, which may be a prefix of the whole
/// message of `wire_len` bytes (pass `bytes.len()` when it is complete).
///
/// ```
/// use tapio_collector_dns::message::decode;
///
/// // A query for example.com/A with id 0x1234.
/// let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
/// q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
/// let msg = decode(&q, q.len())?;
/// assert_eq!(msg.id, 0x1234);
/// assert!(!msg.flags.response);
/// assert_eq!(msg.questions[0].name, "example.com");
/// assert_eq!(msg.questions[0].qtype, "A");
/// # Ok::<(), tapio_collector_dns::message::MessageError>(())
/// ```
pub fn decode(bytes: &[u8], wire_len: usize) -> Result<DnsMessage, MessageError> {
    if bytes.len() < 12 {
        return Err(MessageError::TooShort { len: bytes.len() });
    }
    let cut = bytes.len() < wire_len;
    let mut decoder = BinDecoder::new(bytes);
    let header =
        Header::read(&mut decoder).map_err(|_| MessageError::TooShort { len: bytes.len() })?;
    // Raw opcode and low rcode bits, as hickory maps unknown values lossily.
    let opcode_raw = (bytes[2] >> 3) & 0x0f;
    let rcode_low = u16::from(bytes[3] & 0x0f);
    let counts = header.counts;
    let mut partial = false;

    let mut questions = Vec::with_capacity(usize::from(counts.queries).min(MAX_QUESTIONS));
    for index in 0..usize::from(counts.queries) {
        match Query::read(&mut decoder) {
            Ok(q) => {
                if questions.len() < MAX_QUESTIONS {
                    questions.push(DnsQuestion {
                        name: render_name(q.name()),
                        qtype: type_name(q.query_type()),
                        class: class_name(q.query_class()),
                    });
                }
            }
            Err(err) => {
                if cut {
                    // Cut off by the capture: keep the questions before it.
                    partial = true;
                    break;
                }
                return Err(MessageError::Question {
                    index,
                    reason: err.to_string(),
                });
            }
        }
    }
    // Responses may carry no question (FORMERR, NOTIMP); a question that
    // was announced but cut off by the capture leaves nothing to report.
    if questions.is_empty() && counts.queries > 0 {
        return Err(MessageError::NoQuestion);
    }

    let mut answers = Vec::new();
    let mut edns = None;
    let mut rcode_high = 0u16;
    let sections = [
        (counts.answers, 0u8),
        (counts.authorities, 1),
        (counts.additionals, 2),
    ];
    'sections: for (count, section) in sections {
        if partial {
            break;
        }
        for _ in 0..count {
            let start = decoder.index();
            let record = match Record::read(&mut decoder) {
                Ok(r) => r,
                Err(_) => {
                    partial = true;
                    if cut && section == 0 && answers.len() < MAX_ANSWERS {
                        answers.extend(cut_record(bytes, start));
                    }
                    break 'sections;
                }
            };
            match section {
                0 if answers.len() < MAX_ANSWERS => {
                    let (data, ip) = summarise(&record.data);
                    answers.push(DnsAnswer {
                        name: render_name(&record.name),
                        rtype: type_name(record.record_type()),
                        ttl: record.ttl,
                        data,
                        ip,
                        truncated: false,
                    });
                }
                2 if record.record_type() == RecordType::OPT && edns.is_none() => {
                    rcode_high = u16::from(((record.ttl >> 24) & 0xff) as u8);
                    let options = match &record.data {
                        RData::OPT(opt) => opt.options.iter().map(|(c, _)| u16::from(*c)).collect(),
                        _ => Vec::new(),
                    };
                    edns = Some(DnsEdns {
                        udp_payload_size: u16::from(record.dns_class),
                        version: ((record.ttl >> 16) & 0xff) as u8,
                        dnssec_ok: record.ttl & 0x8000 != 0,
                        options,
                    });
                }
                _ => {}
            }
        }
    }
    // Even when every announced record decoded, a cut message lost bytes.
    partial |= cut;
    let rcode = (rcode_high << 4) | rcode_low;
    Ok(DnsMessage {
        id: header.id,
        opcode: opcode_name(opcode_raw),
        rcode,
        rcode_name: rcode_name(rcode),
        flags: DnsFlags {
            response: header.message_type == MessageType::Response,
            authoritative: header.authoritative,
            truncated: header.truncation,
            recursion_desired: header.recursion_desired,
            recursion_available: header.recursion_available,
            authentic_data: header.authentic_data,
            checking_disabled: header.checking_disabled,
        },
        questions,
        answers,
        answer_count: counts.answers,
        authority_count: counts.authorities,
        additional_count: counts.additionals,
        edns,
        size: u32::try_from(wire_len).unwrap_or(u32::MAX),
        partial,
    })
}

/// Summarise a resource record that the capture cut off at `start`: owner,
/// type and TTL when they were captured, and for TXT the strings that were.
fn cut_record(bytes: &[u8], start: usize) -> Option<DnsAnswer> {
    let mut d = BinDecoder::new(bytes);
    d.read_slice(start).ok()?;
    let name = Name::read(&mut d).ok()?;
    let rtype = RecordType::from(d.read_u16().ok()?.unverified());
    d.read_u16().ok()?; // class
    let ttl = d.read_u32().ok()?.unverified();
    d.read_u16().ok()?; // rdlength: past the capture by definition
    let mut data = String::new();
    if rtype == RecordType::TXT {
        // Whole character-strings, then the captured part of a cut one.
        let rest = d.read_slice(d.len()).ok()?.unverified();
        let mut pos = 0;
        while let Some(&len) = rest.get(pos) {
            let end = (pos + 1 + usize::from(len)).min(rest.len());
            if !data.is_empty() && data.len() < MAX_RDATA_TEXT {
                data.push(' ');
            }
            push_lossy_text(&mut data, &rest[pos + 1..end]);
            pos = end;
        }
    }
    Some(DnsAnswer {
        name: render_name(&name),
        rtype: type_name(rtype),
        ttl,
        data,
        ip: None,
        truncated: true,
    })
}

/// One DNS message found in a TCP segment: the two-byte length prefix says
/// how long the message is; `bytes` may hold only a prefix of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFrame<'a> {
    /// The message bytes available (without the length prefix).
    pub bytes: &'a [u8],
    /// The message length announced by the prefix.
    pub wire_len: usize,
}

/// Split the captured start of a TCP segment's payload into the DNS
/// messages it begins with (RFC 1035 §4.2.2 framing). `payload_len` is the
/// segment's full payload length, `captured` its captured prefix. Returns
/// the frames (the last possibly cut) and how many bytes of a message
/// continue past this segment (to skip in later segments of the stream).
///
/// ```
/// use tapio_collector_dns::message::split_tcp;
///
/// let seg = [0u8, 3, 1, 2, 3, 0, 5, 9];
/// let (frames, rest) = split_tcp(&seg, seg.len());
/// assert_eq!(frames.len(), 2);
/// assert_eq!(frames[0].bytes, &[1, 2, 3]);
/// assert_eq!((frames[1].bytes, frames[1].wire_len), (&[9u8][..], 5));
/// assert_eq!(rest, 4); // four bytes of the second message are still to come
/// ```
pub fn split_tcp(captured: &[u8], payload_len: usize) -> (Vec<TcpFrame<'_>>, usize) {
    let mut frames = Vec::new();
    let mut pos = 0usize;
    let payload_len = payload_len.max(captured.len());
    while pos + 2 <= payload_len {
        let Some(prefix) = captured.get(pos..pos + 2) else {
            // The length prefix itself lies beyond the capture: unknown rest.
            return (frames, 0);
        };
        let wire_len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
        let start = pos + 2;
        let end = start + wire_len;
        let avail_end = end.min(captured.len());
        if start <= avail_end {
            frames.push(TcpFrame {
                bytes: &captured[start..avail_end],
                wire_len,
            });
        }
        if end > payload_len {
            return (frames, end - payload_len);
        }
        if end > captured.len() {
            // The message ends inside this segment but past the capture;
            // the next frames (if any) were not captured.
            return (frames, 0);
        }
        pos = end;
    }
    (frames, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV, TXT};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response() -> Vec<u8> {
        let mut m = Message::response(0xbeef, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(name("svc.example."), RecordType::A));
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.add_answer(Record::from_rdata(
            name("svc.example."),
            60,
            RData::CNAME(CNAME(name("real.example."))),
        ));
        m.add_answer(Record::from_rdata(
            name("real.example."),
            30,
            RData::A(A::new(10, 1, 2, 3)),
        ));
        m.add_answer(Record::from_rdata(
            name("real.example."),
            30,
            RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        ));
        m.add_answer(Record::from_rdata(
            name("_http._tcp.example."),
            5,
            RData::SRV(SRV::new(1, 2, 80, name("real.example."))),
        ));
        m.add_answer(Record::from_rdata(
            name("t.example."),
            7,
            RData::TXT(TXT::new(vec!["hello".into(), "world".into()])),
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(true);
        m.set_edns(edns);
        m.to_vec().unwrap()
    }

    #[test]
    fn addresses_of_follows_cnames_from_the_question_only() {
        let bytes = response();
        let mut msg = decode(&bytes, bytes.len()).unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let got: Vec<_> = msg.addresses_of("svc.example").collect();
        assert_eq!(got, [(v4, 30), (v6, 30)]);
        // Case-insensitive; the alias target itself; an unrelated name.
        assert_eq!(msg.addresses_of("SVC.Example").count(), 2);
        assert_eq!(msg.addresses_of("real.example").count(), 2);
        assert_eq!(msg.addresses_of("t.example").count(), 0);
        // A CNAME loop ends.
        msg.answers[1].name = "loop.example".into();
        msg.answers.push(DnsAnswer {
            name: "real.example".into(),
            rtype: "CNAME".into(),
            ttl: 1,
            data: "svc.example".into(),
            ip: None,
            truncated: false,
        });
        let got: Vec<_> = msg.addresses_of("svc.example").collect();
        assert_eq!(got, [(v6, 30)]);
    }

    #[test]
    fn full_response() {
        let bytes = response();
        let msg = decode(&bytes, bytes.len()).unwrap();
        assert_eq!(msg.id, 0xbeef);
        assert!(msg.flags.response && msg.flags.recursion_available);
        assert_eq!(msg.rcode_name, "NOERROR");
        assert_eq!(msg.questions[0].name, "svc.example");
        assert_eq!(msg.answer_count, 5);
        let data: Vec<_> = msg
            .answers
            .iter()
            .map(|a| (a.rtype.as_ref(), a.ttl, a.data.as_str()))
            .collect();
        assert_eq!(
            data,
            vec![
                ("CNAME", 60, "real.example"),
                ("A", 30, "10.1.2.3"),
                ("AAAA", 30, "fd00::1"),
                ("SRV", 5, "1 2 80 real.example"),
                ("TXT", 7, "hello world"),
            ]
        );
        assert_eq!(msg.answer_ips().len(), 2);
        let edns = msg.edns.unwrap();
        assert_eq!(edns.udp_payload_size, 1232);
        assert!(edns.dnssec_ok);
        assert!(!msg.partial);
    }

    #[test]
    fn prefixes_decode_partially_or_error_never_panic() {
        let bytes = response();
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut], bytes.len()) {
                Ok(msg) => {
                    assert!(msg.partial, "cut at {cut} not marked partial");
                    assert_eq!(msg.questions[0].name, "svc.example");
                }
                Err(_) => assert!(cut < 12 + 17, "cut at {cut} failed after the question"),
            }
        }
    }

    #[test]
    fn cut_txt_record_keeps_captured_strings() {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(name("t."), RecordType::TXT));
        m.add_answer(Record::from_rdata(
            name("t."),
            9,
            RData::TXT(TXT::new(vec!["a".repeat(200), "b".repeat(200)])),
        ));
        let bytes = m.to_vec().unwrap();
        // Header 12 + question 7 + owner (a pointer) 2 + fixed 10 + 1 + 200 + 1 + 50.
        let cut = 12 + 7 + 2 + 10 + 1 + 200 + 1 + 50;
        let msg = decode(&bytes[..cut], bytes.len()).unwrap();
        assert!(msg.partial);
        let a = &msg.answers[0];
        assert!(a.truncated);
        assert_eq!((a.rtype.as_ref(), a.ttl), ("TXT", 9));
        let b50 = "b".repeat(50);
        assert_eq!(
            a.data,
            format!("{} {b50}", "a".repeat(200))
                .chars()
                .take(MAX_RDATA_TEXT)
                .collect::<String>()
        );
    }

    #[test]
    fn json_round_trip_with_omitted_fields() {
        let bytes = response();
        let msg = decode(&bytes, bytes.len()).unwrap();
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(serde_json::from_str::<DnsMessage>(&json).unwrap(), msg);
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        let query = decode(&q, q.len()).unwrap();
        let json = serde_json::to_string(&query).unwrap();
        assert_eq!(
            json,
            r#"{"id":4660,"opcode":"QUERY","rcode":0,"rcode_name":"NOERROR","flags":"rd","questions":[{"name":"a","type":"A","class":"IN"}],"size":19}"#
        );
        assert_eq!(serde_json::from_str::<DnsMessage>(&json).unwrap(), query);
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.99.100.255",
            "255.255.255.255",
            "::1",
            "fd00::53:7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn all_flags_serialise_in_dig_order() {
        let all = DnsFlags {
            response: true,
            authoritative: true,
            truncated: true,
            recursion_desired: true,
            recursion_available: true,
            authentic_data: true,
            checking_disabled: true,
        };
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(json, r#""qr aa tc rd ra ad cd""#);
        assert_eq!(serde_json::from_str::<DnsFlags>(&json).unwrap(), all);
        assert_eq!(
            serde_json::to_string(&DnsFlags::default()).unwrap(),
            r#""""#
        );
    }

    #[test]
    fn extended_rcode_and_names() {
        let mut m = Message::error_msg(7, hickory_proto::op::OpCode::Query, ResponseCode::BADVERS);
        m.add_query(Query::query(name("a.b."), RecordType::Unknown(65000)));
        let mut edns = Edns::new();
        edns.set_rcode_high(ResponseCode::BADVERS.high());
        m.set_edns(edns);
        let bytes = m.to_vec().unwrap();
        let msg = decode(&bytes, bytes.len()).unwrap();
        assert_eq!(msg.rcode, 16);
        assert_eq!(msg.rcode_name, "BADVERS");
        assert_eq!(msg.questions[0].qtype, "TYPE65000");
    }

    #[test]
    fn escapes_odd_labels() {
        let n = Name::from_labels(vec![&b"a.b"[..], &b"c\x01\""[..], b"d"]).unwrap();
        assert_eq!(render_name(&n), "a\\.b.c\\001\\\".d");
    }

    #[test]
    fn compression_loop_is_an_error() {
        // Question name is a pointer to itself.
        let mut q = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(
            decode(&q, q.len()),
            Err(MessageError::Question { .. })
        ));
        // Forward pointer.
        let mut q = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0xc0, 40, 0, 1, 0, 1]);
        assert!(decode(&q, q.len()).is_err());
        // Oversize label length (64 uses the reserved 01 prefix bits).
        let mut q = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 64];
        q.extend_from_slice(&[b'a'; 64]);
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(decode(&q, q.len()).is_err());
    }

    #[test]
    fn tcp_framing() {
        assert_eq!(split_tcp(&[], 0), (vec![], 0));
        assert_eq!(split_tcp(&[0], 1), (vec![], 0));
        // Prefix says 300 bytes, the segment has 10 of them, 4 captured.
        let seg = [1u8, 44, 1, 2, 3, 4];
        let (frames, rest) = split_tcp(&seg, 12);
        assert_eq!(
            frames,
            vec![TcpFrame {
                bytes: &[1, 2, 3, 4],
                wire_len: 300
            }]
        );
        assert_eq!(rest, 290);
        // The second message's prefix is beyond the capture.
        let seg = [0u8, 1, 9];
        let (frames, rest) = split_tcp(&seg, 10);
        assert_eq!(frames.len(), 1);
        assert_eq!(rest, 0);
    }
}
