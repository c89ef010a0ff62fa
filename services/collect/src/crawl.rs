//! A polite web crawl: breadth-first from seed URLs, within the seeds' hosts or an allow-list,
//! honouring robots.txt (and its crawl-delay), at most one request per host per `delay`,
//! bounded by pages and depth; pages become their main text, deduplicated by canonical URL.
//! Pages that fail (errors, redirect loops, unreachable hosts, robots disallow) are recorded
//! as skipped and the crawl goes on.

use crate::{CollectError, Collected, Document, html};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use url::Url;

#[derive(Clone, Debug)]
pub struct CrawlOptions {
    pub seeds: Vec<String>,
    /// Hosts that may be crawled; empty: the seeds' hosts.
    pub allow_hosts: Vec<String>,
    pub max_pages: usize,
    /// Links followed from a seed (0: the seeds only).
    pub max_depth: usize,
    /// The least time between two requests to one host (robots.txt may ask for more).
    pub delay: Duration,
    pub user_agent: String,
    pub timeout: Duration,
    pub max_bytes: usize,
}

impl Default for CrawlOptions {
    fn default() -> Self {
        CrawlOptions {
            seeds: vec![],
            allow_hosts: vec![],
            max_pages: 100,
            max_depth: 2,
            delay: Duration::from_millis(1000),
            user_agent: "QuarkBot/0.1 (+https://github.com/quark)".into(),
            timeout: Duration::from_secs(20),
            max_bytes: 4 << 20,
        }
    }
}

/// `host:port` of a URL: the unit of politeness.
fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// The URL without its fragment: `/a#x` and `/a` are one page.
fn normalise(mut url: Url) -> Url {
    url.set_fragment(None);
    url
}

struct Host {
    robots: Option<robotxt::Robots>,
    next_request: Instant,
    delay: Duration,
}

pub struct Crawler {
    options: CrawlOptions,
    client: reqwest::Client,
    hosts: HashMap<String, Host>,
}

impl Crawler {
    pub fn new(options: CrawlOptions) -> Result<Crawler, CollectError> {
        let client = reqwest::Client::builder()
            .user_agent(options.user_agent.clone())
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| CollectError::Invalid(format!("HTTP client: {e}")))?;
        Ok(Crawler {
            options,
            client,
            hosts: HashMap::new(),
        })
    }

    /// Waits for the host's turn, then fetches.
    async fn get(&mut self, url: &Url) -> Result<reqwest::Response, String> {
        let host = self.hosts.get_mut(&host_key(url)).expect("host known");
        tokio::time::sleep_until(host.next_request).await;
        host.next_request = Instant::now() + host.delay;
        self.client.get(url.clone()).send().await.map_err(|e| {
            if e.is_redirect() {
                "redirect loop".to_string()
            } else if e.is_connect() || e.is_timeout() {
                format!("unreachable: {e}")
            } else {
                e.to_string()
            }
        })
    }

    /// Fetches and parses a host's robots.txt the first time the host is seen (RFC 9309: a
    /// 4xx means no rules, an unreachable or failing file means stay away).
    async fn allowed(&mut self, url: &Url) -> Result<bool, String> {
        let key = host_key(url);
        if !self.hosts.contains_key(&key) {
            self.hosts.insert(
                key.clone(),
                Host {
                    robots: None,
                    next_request: Instant::now(),
                    delay: self.options.delay,
                },
            );
            let robots_url = url.join("/robots.txt").map_err(|e| e.to_string())?;
            let robots = match self.get(&robots_url).await {
                Ok(r) if r.status().is_success() => {
                    let body = r.bytes().await.map_err(|e| e.to_string())?;
                    Some(robotxt::Robots::from_bytes(&body, &self.options.user_agent))
                }
                Ok(r) if r.status().is_client_error() => None,
                Ok(r) => return Err(format!("robots.txt: HTTP {}", r.status().as_u16())),
                Err(e) => return Err(format!("robots.txt: {e}")),
            };
            let host = self.hosts.get_mut(&key).unwrap();
            if let Some(delay) = robots.as_ref().and_then(|r| r.crawl_delay()) {
                host.delay = host.delay.max(delay);
            }
            host.robots = robots;
        }
        let host = &self.hosts[&key];
        Ok(host
            .robots
            .as_ref()
            .is_none_or(|r| r.is_relative_allowed(url.path())))
    }

    pub async fn crawl(mut self) -> Collected {
        let mut collected = Collected::default();
        let mut frontier: VecDeque<(Url, usize)> = VecDeque::new();
        let mut seen: HashSet<Url> = HashSet::new();
        let mut canonicals: HashSet<Url> = HashSet::new();
        let mut allowed_hosts: HashSet<String> = self.options.allow_hosts.iter().cloned().collect();
        for seed in &self.options.seeds {
            match Url::parse(seed) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {
                    if self.options.allow_hosts.is_empty() {
                        allowed_hosts.insert(url.host_str().unwrap_or("").to_string());
                    }
                    let url = normalise(url);
                    if seen.insert(url.clone()) {
                        frontier.push_back((url, 0));
                    }
                }
                _ => collected.skip(seed.clone(), "not an http(s) URL"),
            }
        }
        let mut dead_hosts: HashMap<String, String> = HashMap::new();
        while let Some((url, depth)) = frontier.pop_front() {
            if collected.documents.len() >= self.options.max_pages {
                break;
            }
            if let Some(reason) = dead_hosts.get(&host_key(&url)) {
                collected.skip(url.as_str(), reason.clone());
                continue;
            }
            match self.allowed(&url).await {
                Ok(true) => {}
                Ok(false) => {
                    collected.skip(url.as_str(), "disallowed by robots.txt");
                    continue;
                }
                Err(reason) => {
                    dead_hosts.insert(host_key(&url), reason.clone());
                    collected.skip(url.as_str(), reason);
                    continue;
                }
            }
            let page = match self.fetch(&url).await {
                Ok(page) => page,
                Err(reason) => {
                    collected.skip(url.as_str(), reason);
                    continue;
                }
            };
            let canonical = page
                .canonical
                .as_deref()
                .and_then(|c| url.join(c).ok())
                .map(normalise)
                .unwrap_or_else(|| url.clone());
            if !canonicals.insert(canonical.clone()) {
                collected.skip(url.as_str(), format!("duplicate of {canonical}"));
                continue;
            }
            if depth < self.options.max_depth {
                for link in &page.links {
                    let Ok(next) = url.join(link).map(normalise) else {
                        continue;
                    };
                    if matches!(next.scheme(), "http" | "https")
                        && allowed_hosts.contains(next.host_str().unwrap_or(""))
                        && seen.insert(next.clone())
                    {
                        frontier.push_back((next, depth + 1));
                    }
                }
            }
            if page.text.trim().is_empty() {
                collected.skip(url.as_str(), "no text");
                continue;
            }
            collected.documents.push(Document {
                id: canonical.to_string(),
                text: page.text,
                source: url.to_string(),
            });
        }
        collected
    }

    async fn fetch(&mut self, url: &Url) -> Result<html::Page, String> {
        let response = self.get(url).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if response
            .content_length()
            .is_some_and(|n| n as usize > self.options.max_bytes)
        {
            return Err("too large".into());
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > self.options.max_bytes {
            return Err("too large".into());
        }
        let text = String::from_utf8_lossy(&body);
        if content_type.starts_with("text/html") || content_type.starts_with("application/xhtml") {
            html::parse(&text)
        } else if content_type.starts_with("text/plain") {
            Ok(html::Page {
                title: None,
                text: text.into_owned(),
                links: vec![],
                canonical: None,
            })
        } else {
            Err(format!("unsupported content type {content_type:?}"))
        }
    }
}
