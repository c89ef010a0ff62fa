//! PII scrubbing: personal data and secrets become typed placeholders (`<EMAIL>`, …).
//!
//! Patterns find candidates; validators keep false positives out: card numbers must pass
//! Luhn, IBANs the mod-97 check, SSNs the SSA's allocation rules, IPs must parse; documentation
//! addresses (example.com, .test, …) and dotted version numbers are left alone.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::LazyLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    IpAddress,
    CreditCard,
    Iban,
    UsSsn,
    Secret,
}

impl PiiKind {
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::IpAddress,
        PiiKind::CreditCard,
        PiiKind::Iban,
        PiiKind::UsSsn,
        PiiKind::Secret,
    ];

    pub fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "<EMAIL>",
            PiiKind::Phone => "<PHONE>",
            PiiKind::IpAddress => "<IP_ADDRESS>",
            PiiKind::CreditCard => "<CREDIT_CARD>",
            PiiKind::Iban => "<IBAN>",
            PiiKind::UsSsn => "<US_SSN>",
            PiiKind::Secret => "<SECRET>",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::IpAddress => "ip_address",
            PiiKind::CreditCard => "credit_card",
            PiiKind::Iban => "iban",
            PiiKind::UsSsn => "us_ssn",
            PiiKind::Secret => "secret",
        }
    }
}

/// One piece of PII found: its kind and byte range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("PII pattern")
}

static SECRET: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
        r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        r"|(?i:aws_secret_access_key)\s*[=:]\s*[A-Za-z0-9/+=]{40}\b",
        r"|\bgh[pousr]_[A-Za-z0-9]{36,255}\b",
        r"|\bgithub_pat_[A-Za-z0-9_]{82}\b",
        r"|\bxox[baprs]-[A-Za-z0-9-]{10,72}\b",
    ))
});
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b"));
static IBAN: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"));
static CARD: LazyLock<Regex> = LazyLock::new(|| re(r"\b(?:\d[ -]?){12,18}\d\b"));
static SSN: LazyLock<Regex> = LazyLock::new(|| re(r"\b\d{3}-\d{2}-\d{4}\b"));
static IPV4: LazyLock<Regex> = LazyLock::new(|| re(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"));
static IPV6: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:%[0-9a-z]+)?"));
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}\b",
        r"|(?:\(\d{3}\) ?|\b\d{3}[-.])\d{3}[-.]\d{4}\b",
    ))
});

/// Domains reserved for documentation and tests (RFC 2606, 6761): never real people.
fn reserved_email(address: &str) -> bool {
    let domain = address
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    ["example.com", "example.org", "example.net"]
        .iter()
        .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
        || [".example", ".test", ".invalid", ".localhost", ".local"]
            .iter()
            .any(|tld| domain.ends_with(tld))
        || domain == "localhost"
}

pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = d as u32;
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Card numbers: 13–19 digits, a known issuer prefix, a valid Luhn check digit.
fn card(candidate: &str) -> bool {
    let digits: Vec<u8> = candidate
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    let prefix = |n: usize| digits[..n].iter().fold(0u32, |acc, d| acc * 10 + *d as u32);
    let issuer = match digits[0] {
        4 => true,                                                                     // Visa
        5 => (51..=55).contains(&prefix(2)),                                           // Mastercard
        2 => (2221..=2720).contains(&prefix(4)), // Mastercard 2-series
        3 => matches!(prefix(2), 34 | 37 | 36 | 38) || prefix(2) == 35, // Amex, Diners, JCB
        6 => prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3)), // Discover
        _ => false,
    };
    (13..=19).contains(&digits.len()) && issuer && luhn(&digits)
}

/// IBAN: the country's length and the ISO 13616 mod-97 check.
fn iban(candidate: &str) -> bool {
    let compact: String = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    let length = match &compact[..2] {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "NL" => 18,
        "AT" | "EE" | "LU" => 20,
        "CH" | "LI" => 21,
        "DE" | "GB" | "IE" => 22,
        "SE" | "ES" => 24,
        "PT" => 25,
        "FR" | "IT" | "MC" => 27,
        "PL" => 28,
        _ => 0,
    };
    if compact.len() != length {
        return false;
    }
    let rearranged = format!("{}{}", &compact[4..], &compact[..4]);
    let mut remainder = 0u32;
    for c in rearranged.chars() {
        let value = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// SSA rules: area not 000, 666 or 900–999; group not 00; serial not 0000.
fn ssn(candidate: &str) -> bool {
    let parts: Vec<u32> = candidate
        .split('-')
        .filter_map(|p| p.parse().ok())
        .collect();
    matches!(parts.as_slice(), [area, group, serial]
        if *area != 0 && *area != 666 && *area < 900 && *group != 0 && *serial != 0)
}

/// An IPv4 address, unless it reads as a version number (`v1.2.3.4`, `version 10.0.0.1`) or
/// is part of a longer dotted sequence.
fn ipv4(text: &str, start: usize, end: usize) -> bool {
    let candidate = &text[start..end];
    if candidate.parse::<std::net::Ipv4Addr>().is_err()
        || candidate
            .split('.')
            .any(|o| o.len() > 1 && o.starts_with('0'))
    {
        return false;
    }
    let previous_word = text[..start]
        .split_whitespace()
        .next_back()
        .unwrap_or("")
        .trim_end_matches(':')
        .to_ascii_lowercase();
    let after = &text[end..];
    let versioned = [
        "v", "version", "ver", "ver.", "release", "build", "firmware",
    ]
    .contains(&previous_word.as_str());
    let dotted_on = after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit());
    let dotted_before = text[..start].ends_with('.');
    !versioned && !dotted_on && !dotted_before
}

fn ipv6(candidate: &str) -> bool {
    let address = candidate.split('%').next().unwrap_or(candidate);
    let hex_digits = address.chars().filter(char::is_ascii_hexdigit).count();
    address.parse::<std::net::Ipv6Addr>().is_ok() && hex_digits >= 4
}

/// Every finding in `text`, without overlaps (earlier first, then longer).
pub fn find(text: &str) -> Vec<Finding> {
    let mut findings: Vec<Finding> = Vec::new();
    let mut push = |kind, m: regex::Match| {
        findings.push(Finding {
            kind,
            start: m.start(),
            end: m.end(),
        })
    };
    for m in SECRET.find_iter(text) {
        push(PiiKind::Secret, m);
    }
    for m in EMAIL
        .find_iter(text)
        .filter(|m| !reserved_email(m.as_str()))
    {
        push(PiiKind::Email, m);
    }
    for m in IBAN.find_iter(text).filter(|m| iban(m.as_str())) {
        push(PiiKind::Iban, m);
    }
    for m in CARD.find_iter(text).filter(|m| card(m.as_str())) {
        push(PiiKind::CreditCard, m);
    }
    for m in SSN.find_iter(text).filter(|m| ssn(m.as_str())) {
        push(PiiKind::UsSsn, m);
    }
    for m in IPV4
        .find_iter(text)
        .filter(|m| ipv4(text, m.start(), m.end()))
    {
        push(PiiKind::IpAddress, m);
    }
    for m in IPV6.find_iter(text).filter(|m| ipv6(m.as_str())) {
        push(PiiKind::IpAddress, m);
    }
    for m in PHONE.find_iter(text) {
        let digits = m.as_str().chars().filter(char::is_ascii_digit).count();
        if (10..=15).contains(&digits) {
            push(PiiKind::Phone, m);
        }
    }
    // Kinds were added most specific first: at equal starts the stable sort keeps that order.
    findings.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut kept: Vec<Finding> = Vec::with_capacity(findings.len());
    for f in findings {
        if kept.last().is_none_or(|last| f.start >= last.end) {
            kept.push(f);
        }
    }
    kept
}

/// `text` with every finding replaced by its placeholder, and the count of each kind.
pub fn scrub(text: &str) -> (String, BTreeMap<PiiKind, usize>) {
    let findings = find(text);
    let mut counts = BTreeMap::new();
    if findings.is_empty() {
        return (text.to_string(), counts);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in findings {
        out.push_str(&text[at..f.start]);
        out.push_str(f.kind.placeholder());
        *counts.entry(f.kind).or_insert(0) += 1;
        at = f.end;
    }
    out.push_str(&text[at..]);
    (out, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators() {
        assert!(luhn(&[4, 5, 3, 9, 1, 4, 8, 8, 0, 3, 4, 3, 6, 4, 6, 7]));
        assert!(card("4539 1488 0343 6467"));
        assert!(!card("4539 1488 0343 6468"), "fails Luhn");
        assert!(iban("GB82 WEST 1234 5698 7654 32"));
        assert!(!iban("GB82 WEST 1234 5698 7654 33"));
        assert!(ssn("123-45-6789") && !ssn("666-45-6789") && !ssn("123-00-6789"));
    }

    #[test]
    fn scrubs_to_typed_placeholders() {
        let (text, counts) = scrub(
            "Mail jane.doe@gmail.com or call +1 415-555-0132; card 4539 1488 0343 6467, server 10.1.2.3.",
        );
        assert_eq!(
            text,
            "Mail <EMAIL> or call <PHONE>; card <CREDIT_CARD>, server <IP_ADDRESS>."
        );
        assert_eq!(counts.values().sum::<usize>(), 4);
        let (kept, counts) = scrub("see user@example.com, release 1.2.3.4, v10.0.0.1");
        assert_eq!(kept, "see user@example.com, release 1.2.3.4, v10.0.0.1");
        assert!(counts.is_empty());
    }
}
