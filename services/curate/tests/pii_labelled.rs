//! PII precision and recall per type on a labelled set: generated positives of every kind in
//! sentence templates, and near-misses that must be left alone (numbers failing Luhn or
//! mod-97, version strings shaped like IP addresses, documentation addresses in code, invalid
//! SSNs, times and C++ paths that look like IPv6).

use quark_curate::pii::{PiiKind, find, luhn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

struct Case {
    text: String,
    /// The PII in `text`: kind and the exact substring.
    labels: Vec<(PiiKind, String)>,
}

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

fn luhn_complete(prefix: &str, len: usize, rng: &mut StdRng) -> String {
    let mut number = format!("{prefix}{}", digits(rng, len - prefix.len() - 1));
    let check = (0..10u8)
        .find(|d| {
            let all: Vec<u8> = number.bytes().map(|b| b - b'0').chain([*d]).collect();
            luhn(&all)
        })
        .unwrap();
    number.push(char::from(b'0' + check));
    number
}

fn group(number: &str, sep: &str, size: usize) -> String {
    number
        .as_bytes()
        .chunks(size)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(sep)
}

fn iban_with(country: &str, bban: &str, check: Option<u32>) -> String {
    let numeric: String = format!("{bban}{country}00")
        .chars()
        .map(|c| {
            if c.is_ascii_digit() {
                c.to_string()
            } else {
                (c as u32 - 'A' as u32 + 10).to_string()
            }
        })
        .collect();
    let remainder = numeric
        .bytes()
        .fold(0u32, |r, b| (r * 10 + (b - b'0') as u32) % 97);
    let check = check.unwrap_or(98 - remainder);
    format!("{country}{check:02}{bban}")
}

fn letters(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect()
}

fn alnum(rng: &mut StdRng, n: usize) -> String {
    const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| char::from(SET[rng.random_range(0..SET.len())]))
        .collect()
}

fn positive(rng: &mut StdRng, kind: PiiKind, i: usize) -> String {
    match kind {
        PiiKind::Email => {
            let names = ["jane.doe", "j_smith", "mark+news", "li.wei", "o.connor"];
            let domains = [
                "gmail.com",
                "corp.co.uk",
                "mail.de",
                "uni-berlin.edu",
                "startup.io",
            ];
            format!(
                "{}{}@{}",
                names[i % 5],
                rng.random_range(1..999),
                domains[(i / 5) % 5]
            )
        }
        PiiKind::Phone => match i % 5 {
            0 => format!("+1 415-555-{}", digits(rng, 4)),
            1 => format!("(212) 555-{}", digits(rng, 4)),
            2 => format!("+44 20 {} {}", digits(rng, 4), digits(rng, 4)),
            3 => format!("212.555.{}", digits(rng, 4)),
            _ => format!(
                "+33 1 {} {} {} {}",
                digits(rng, 2),
                digits(rng, 2),
                digits(rng, 2),
                digits(rng, 2)
            ),
        },
        PiiKind::IpAddress => match i % 3 {
            0 => format!(
                "{}.{}.{}.{}",
                rng.random_range(1..224),
                rng.random_range(0..256),
                rng.random_range(0..256),
                rng.random_range(1..255)
            ),
            1 => format!(
                "2001:db8:{:x}::{:x}:{:x}",
                rng.random_range(1..0xffffu32),
                rng.random_range(1..0xffffu32),
                rng.random_range(1..0xffffu32)
            ),
            _ => format!(
                "fe80::{:x}:{:x}:{:x}:{:x}",
                rng.random_range(0x100..0xffffu32),
                rng.random_range(0x100..0xffffu32),
                rng.random_range(0x100..0xffffu32),
                rng.random_range(0x100..0xffffu32)
            ),
        },
        PiiKind::CreditCard => {
            let (prefix, len) = [
                ("4", 16),
                ("51", 16),
                ("55", 16),
                ("37", 15),
                ("6011", 16),
                ("2221", 16),
            ][i % 6];
            let number = luhn_complete(prefix, len, rng);
            match i % 3 {
                0 => number,
                1 => group(&number, " ", 4),
                _ => group(&number, "-", 4),
            }
        }
        PiiKind::Iban => {
            let iban = match i % 4 {
                0 => iban_with("DE", &digits(rng, 18), None),
                1 => iban_with(
                    "GB",
                    &format!("{}{}", letters(rng, 4), digits(rng, 14)),
                    None,
                ),
                2 => iban_with("FR", &digits(rng, 23), None),
                _ => iban_with(
                    "NL",
                    &format!("{}{}", letters(rng, 4), digits(rng, 10)),
                    None,
                ),
            };
            if i.is_multiple_of(2) {
                group(&iban, " ", 4)
            } else {
                iban
            }
        }
        PiiKind::UsSsn => {
            let area = loop {
                let a = rng.random_range(1..900);
                if a != 666 {
                    break a;
                }
            };
            format!(
                "{area:03}-{:02}-{:04}",
                rng.random_range(1..100),
                rng.random_range(1..10000)
            )
        }
        PiiKind::Secret => match i % 5 {
            0 => format!("AKIA{}", letters(rng, 16)),
            1 => format!("ghp_{}", alnum(rng, 36)),
            2 => format!("aws_secret_access_key = {}", alnum(rng, 40)),
            3 => format!("github_pat_{}", alnum(rng, 82)),
            _ => format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{}\n{}\n-----END RSA PRIVATE KEY-----",
                alnum(rng, 64),
                alnum(rng, 64)
            ),
        },
    }
}

const TEMPLATES: &[&str] = &[
    "Please contact {} for details.",
    "The record lists {} next to the customer name.",
    "{}",
    "Sent from my phone; reach me at {} tomorrow.",
    "config:\n  value: {}\n  enabled: true",
];

/// Text that looks like PII and is not.
fn near_misses(rng: &mut StdRng) -> Vec<String> {
    let mut texts = vec![
        r#"assert_eq!(user.email, "alice@example.com");"#.to_string(),
        "git config user.email bob@test.example".into(),
        "mail admin@localhost or root@server.local".into(),
        "Upgrade to version 1.2.3.4 before Friday.".into(),
        "release 10.0.0.1 fixed the crash".into(),
        "The OID is 1.3.6.1.4.1 in the MIB.".into(),
        "Meet at 12:30:45 sharp.".into(),
        "use std::collections::HashMap;".into(),
        "Order 12345 shipped on 2024-01-15.".into(),
        "ISBN 978-3-16-148410-0".into(),
        "SSN-like but invalid: 000-12-3456, 666-12-3456, 912-34-5678.".into(),
        "The key AKIA123 is too short, and ghp_short is not a token.".into(),
        "Score 192.168 out of 300.".into(),
    ];
    for i in 0..40 {
        // Card numbers that fail Luhn.
        let valid = luhn_complete(
            ["4", "51", "37"][i % 3],
            if i % 3 == 2 { 15 } else { 16 },
            rng,
        );
        let last = valid.as_bytes()[valid.len() - 1] - b'0';
        let broken = format!("{}{}", &valid[..valid.len() - 1], (last + 1) % 10);
        texts.push(format!("Card on file: {}", group(&broken, " ", 4)));
        // IBANs with a wrong check.
        let good = iban_with("DE", &digits(rng, 18), None);
        let check: u32 = good[2..4].parse().unwrap();
        let bad = iban_with("DE", &good[4..], Some((check + 1) % 97 + 2));
        if bad != good {
            texts.push(format!("Account {}", group(&bad, " ", 4)));
        }
        texts.push(format!(
            "Built with version {}.{}.{}.{}",
            rng.random_range(0..20),
            rng.random_range(0..20),
            rng.random_range(0..100),
            rng.random_range(0..1000)
        ));
        texts.push(format!("let contact = \"dev{i}@example.org\";"));
    }
    texts
}

fn cases() -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut cases = Vec::new();
    for kind in PiiKind::ALL {
        for i in 0..60 {
            let value = positive(&mut rng, kind, i);
            let template = TEMPLATES[i % TEMPLATES.len()];
            cases.push(Case {
                text: template.replace("{}", &value),
                labels: vec![(kind, value)],
            });
        }
    }
    // Several kinds in one text.
    for i in 0..20 {
        let email = positive(&mut rng, PiiKind::Email, i);
        let phone = positive(&mut rng, PiiKind::Phone, i);
        let ip = positive(&mut rng, PiiKind::IpAddress, i);
        cases.push(Case {
            text: format!("From {email} (tel {phone}) logged in from {ip}."),
            labels: vec![
                (PiiKind::Email, email),
                (PiiKind::Phone, phone),
                (PiiKind::IpAddress, ip),
            ],
        });
    }
    for text in near_misses(&mut rng) {
        cases.push(Case {
            text,
            labels: vec![],
        });
    }
    cases
}

#[test]
fn precision_and_recall_per_type_reach_95_percent() {
    let mut tp: BTreeMap<PiiKind, usize> = BTreeMap::new();
    let mut fp: BTreeMap<PiiKind, usize> = BTreeMap::new();
    let mut fn_: BTreeMap<PiiKind, usize> = BTreeMap::new();
    let mut errors = Vec::new();
    for case in cases() {
        let found: Vec<(PiiKind, &str)> = find(&case.text)
            .iter()
            .map(|f| (f.kind, &case.text[f.start..f.end]))
            .collect();
        for (kind, value) in &case.labels {
            if found.iter().any(|(k, v)| k == kind && v == value) {
                *tp.entry(*kind).or_default() += 1;
            } else {
                *fn_.entry(*kind).or_default() += 1;
                errors.push(format!("missed {kind:?} {value:?} in {:?}", case.text));
            }
        }
        for (kind, value) in &found {
            if !case.labels.iter().any(|(k, v)| k == kind && v == value) {
                *fp.entry(*kind).or_default() += 1;
                errors.push(format!("false {kind:?} {value:?} in {:?}", case.text));
            }
        }
    }
    let mut report = Vec::new();
    for kind in PiiKind::ALL {
        let (t, f, n) = (
            tp.get(&kind).copied().unwrap_or(0),
            fp.get(&kind).copied().unwrap_or(0),
            fn_.get(&kind).copied().unwrap_or(0),
        );
        let precision = t as f64 / (t + f).max(1) as f64;
        let recall = t as f64 / (t + n).max(1) as f64;
        report.push((kind, t, f, n, precision, recall));
    }
    println!("{report:#?}");
    for (kind, t, _, _, precision, recall) in &report {
        assert!(*t >= 60, "{kind:?}: only {t} true positives");
        assert!(
            *precision >= 0.95 && *recall >= 0.95,
            "{kind:?}: precision {precision:.3}, recall {recall:.3}\n{}",
            errors.join("\n")
        );
    }
}
