//! HTML to its main text, its links and its canonical URL. Parsing (html5ever, through
//! `scraper`) takes any garbage, giving little or no text out, which callers skip; only HTML
//! nested deeper than any page is refused before parsing, since html5ever's time grows with
//! the square of the depth (100,000 nested `<div>`s took 45 s in a dev build).

use ego_tree::NodeId;
use ego_tree::iter::Edge;
use scraper::{ElementRef, Html, Node, Selector};

pub struct Page {
    pub title: Option<String>,
    pub text: String,
    pub links: Vec<String>,
    pub canonical: Option<String>,
}

/// Elements whose text is never content.
const BOILERPLATE: &[&str] = &[
    "script", "style", "noscript", "nav", "header", "footer", "aside", "form", "template", "svg",
    "iframe", "button", "select",
];
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "br",
    "tr",
    "pre",
    "blockquote",
    "section",
    "article",
    "main",
    "td",
    "th",
    "dd",
    "dt",
    "table",
    "ul",
    "ol",
];

fn selector(css: &str) -> Selector {
    Selector::parse(css).expect("selector")
}

/// Elements nested deeper than this are refused: real pages stay well under a hundred, and
/// browsers stop nesting at 512.
pub const MAX_DEPTH: usize = 4096;

/// Elements whose end tag may be left out: an unclosed one does not nest what follows.
const IMPLIED_END: &[&str] = &[
    "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody", "tfoot",
    "colgroup", "caption", "rb", "rt", "rtc", "rp", "head", "body", "html",
];
/// Elements that never hold anything.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

/// How deep the tags of `html` nest, read from its start and end tags alone (elements whose
/// end tag is optional, and void ones, do not count).
fn tag_depth(html: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for tag in html.split('<').skip(1) {
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let head = tag.split('>').next().unwrap_or_default();
        if name.is_empty() || IMPLIED_END.contains(&name.as_str()) || VOID.contains(&name.as_str())
        {
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
        } else if !head.ends_with('/') {
            depth += 1;
            deepest = deepest.max(depth);
        }
    }
    deepest
}

pub fn parse(html: &str) -> Result<Page, String> {
    let depth = tag_depth(html);
    if depth > MAX_DEPTH {
        return Err(format!(
            "HTML nested {depth} elements deep (more than {MAX_DEPTH})"
        ));
    }
    let document = Html::parse_document(html);
    let root = ["article", "main", "[role=main]", "body"]
        .iter()
        .find_map(|css| document.select(&selector(css)).next())
        .unwrap_or_else(|| document.root_element());
    let mut text = String::new();
    collect_text(root, &mut text);
    let text = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let links = document
        .select(&selector("a[href]"))
        .filter_map(|a| a.value().attr("href"))
        .map(str::to_string)
        .collect();
    let canonical = document
        .select(&selector("link[rel=canonical][href]"))
        .next()
        .and_then(|l| l.value().attr("href"))
        .map(str::to_string);
    let title = document
        .select(&selector("title"))
        .next()
        .map(|t| t.text().collect::<String>().trim().to_string())
        .filter(|t| !t.is_empty());
    Ok(Page {
        title,
        text,
        links,
        canonical,
    })
}

/// Source line breaks are spaces except inside `<pre>`; blocks start new lines. A walk over
/// the tree's edges, not a recursion: HTML nested 100,000 deep (tests/malformed.rs) would
/// overflow the stack.
fn collect_text(root: ElementRef, out: &mut String) {
    let mut skipped: Option<NodeId> = None;
    let mut pre = 0usize;
    for edge in root.traverse() {
        let (node, open) = match edge {
            Edge::Open(node) => (node, true),
            Edge::Close(node) => (node, false),
        };
        if let Some(boilerplate) = skipped {
            if !open && node.id() == boilerplate {
                skipped = None;
            }
            continue;
        }
        match node.value() {
            Node::Text(t) if open && pre > 0 => out.push_str(t),
            Node::Text(t) if open => out.extend(t.chars().map(|c| if c == '\n' { ' ' } else { c })),
            // The root's own tag neither opens a block nor is skipped: only what it holds.
            Node::Element(e) if node.id() != root.id() => {
                let name = e.name();
                if open && BOILERPLATE.contains(&name) {
                    skipped = Some(node.id());
                    continue;
                }
                if name == "pre" {
                    pre = if open { pre + 1 } else { pre - 1 };
                }
                if BLOCKS.contains(&name) {
                    out.push('\n');
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_article_and_drops_the_chrome() {
        let page = parse(
            r#"<html><head><title> Sonnet 18 </title><link rel="canonical" href="https://x.org/s18">
            <script>var tracking = 1;</script></head><body><nav><a href="/">Home</a></nav>
            <article><h1>Sonnet 18</h1><p>Shall I compare thee
            to a summer's day?</p><p>Thou art more <b>lovely</b> and more temperate.</p>
            <a href="/s19">next</a></article><footer>© 2024</footer></body></html>"#,
        )
        .unwrap();
        assert_eq!(page.title.as_deref(), Some("Sonnet 18"));
        assert_eq!(
            page.text,
            "Sonnet 18\nShall I compare thee to a summer's day?\nThou art more lovely and more temperate.\nnext"
        );
        assert_eq!(page.links, vec!["/", "/s19"]);
        assert_eq!(page.canonical.as_deref(), Some("https://x.org/s18"));
        let garbage = parse("<<<div>>><p unclosed <script>").unwrap();
        assert!(garbage.text.len() < 20, "{:?}", garbage.text);
    }

    #[test]
    fn depth_counts_what_nests_and_refuses_only_the_absurd() {
        // Unclosed paragraphs and list items, void and self-closed tags nest nothing.
        let flat = "<ul><li>a<li>b</ul><p>one<p>two<br><img src=x><hr/><div/>".repeat(10_000);
        assert_eq!(tag_depth(&flat), 1);
        let nested =
            |n: usize| format!("{}x{}", "<div><span>".repeat(n), "</span></div>".repeat(n));
        assert_eq!(tag_depth(&nested(100)), 200);
        assert_eq!(parse(&nested(MAX_DEPTH / 2)).unwrap().text, "x");
        let refused = parse(&nested(MAX_DEPTH / 2 + 1)).err().unwrap();
        assert_eq!(refused, "HTML nested 4098 elements deep (more than 4096)");
    }
}
