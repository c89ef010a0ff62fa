//! HTML to its main text, its links and its canonical URL. Parsing (html5ever, through
//! `scraper`) never fails: garbage in gives little or no text out, which callers skip.

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

pub fn parse(html: &str) -> Page {
    let document = Html::parse_document(html);
    let root = ["article", "main", "[role=main]", "body"]
        .iter()
        .find_map(|css| document.select(&selector(css)).next())
        .unwrap_or_else(|| document.root_element());
    let mut text = String::new();
    collect_text(root, false, &mut text);
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
    Page {
        title,
        text,
        links,
        canonical,
    }
}

/// Source line breaks are spaces except inside `<pre>`; blocks start new lines.
fn collect_text(element: ElementRef, pre: bool, out: &mut String) {
    for child in element.children() {
        match child.value() {
            Node::Text(t) if pre => out.push_str(t),
            Node::Text(t) => out.extend(t.chars().map(|c| if c == '\n' { ' ' } else { c })),
            Node::Element(e) => {
                let name = e.name();
                if BOILERPLATE.contains(&name) {
                    continue;
                }
                let block = BLOCKS.contains(&name);
                if block {
                    out.push('\n');
                }
                if let Some(el) = ElementRef::wrap(child) {
                    collect_text(el, pre || name == "pre", out);
                }
                if block {
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
        );
        assert_eq!(page.title.as_deref(), Some("Sonnet 18"));
        assert_eq!(
            page.text,
            "Sonnet 18\nShall I compare thee to a summer's day?\nThou art more lovely and more temperate.\nnext"
        );
        assert_eq!(page.links, vec!["/", "/s19"]);
        assert_eq!(page.canonical.as_deref(), Some("https://x.org/s18"));
        let garbage = parse("<<<div>>><p unclosed <script>");
        assert!(garbage.text.len() < 20, "{:?}", garbage.text);
    }
}
