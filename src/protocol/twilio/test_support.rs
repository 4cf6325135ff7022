//! What the tests of the Twilio wire formats share: parameter lists, the signed webhook
//! fixtures of reference §6.4, and TwiML reduced to what Twilio reads, to compare documents.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use serde::Deserialize;

use super::AbsoluteUrl;

/// Owned name/value pairs, as a decoded form gives them.
pub(super) fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// One line of `fixtures/twilio/webhooks.jsonl`: a webhook as Twilio signed it (reference §6.4).
#[derive(Deserialize)]
pub(super) struct SignedWebhook {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) auth_token: String,
    /// As computed by the official `twilio` 9.13.0 (PyPI) and 6.2.0 (npm) packages.
    pub(super) signature: String,
    pub(super) body: String,
}

/// Every signed webhook fixture.
pub(super) fn webhook_fixtures() -> Vec<SignedWebhook> {
    include_str!("../../../fixtures/twilio/webhooks.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("fixture line"))
        .collect()
}

/// The form body of the fixture called `name`.
pub(super) fn webhook_body(name: &str) -> Vec<u8> {
    let fixture = webhook_fixtures().into_iter().find(|f| f.name == name);
    fixture.expect("fixture exists").body.into_bytes()
}

/// An XML element reduced to what Twilio reads: name, attributes (unordered), text and
/// child elements.
#[derive(Debug, PartialEq)]
pub(super) struct Node {
    pub(super) name: String,
    pub(super) attrs: BTreeMap<String, String>,
    pub(super) text: String,
    pub(super) children: Vec<Node>,
}

fn node(start: &BytesStart) -> Node {
    let attrs = start
        .attributes()
        .map(|attr| {
            let attr = attr.expect("well-formed attribute");
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .unwrap();
            (attr.key.as_ref().to_string(), value.into_owned())
        })
        .collect();
    Node {
        name: start.name().as_ref().to_string(),
        attrs,
        text: String::new(),
        children: Vec::new(),
    }
}

/// Parses a whole document; panics if it is not well-formed XML with one root.
pub(super) fn tree(xml: &str) -> Node {
    let mut reader = Reader::from_str(xml);
    let mut open: Vec<Node> = Vec::new();
    let mut root = None;
    let mut finish = |open: &mut Vec<Node>, done: Node| match open.last_mut() {
        Some(parent) => parent.children.push(done),
        None => {
            assert!(root.is_none(), "a second root element");
            root = Some(done);
        }
    };
    loop {
        let text = match reader.read_event().expect("well-formed XML") {
            Event::Start(start) => {
                open.push(node(&start));
                continue;
            }
            Event::Empty(start) => {
                finish(&mut open, node(&start));
                continue;
            }
            Event::End(_) => {
                let done = open.pop().expect("balanced tags");
                finish(&mut open, done);
                continue;
            }
            Event::Text(text) => text.xml10_content().into_owned(),
            Event::CData(data) => data.xml10_content().into_owned(),
            Event::GeneralRef(reference) => match reference.resolve_char_ref().unwrap() {
                Some(c) => c.to_string(),
                None => resolve_predefined_entity(&reference)
                    .expect("only predefined entities")
                    .to_string(),
            },
            Event::Decl(_) => continue,
            Event::Eof => break,
            other => panic!("unexpected XML event {other:?}"),
        };
        match open.last_mut() {
            Some(element) => element.text.push_str(&text),
            None => assert!(text.trim().is_empty(), "text outside the root: {text:?}"),
        }
    }
    assert!(open.is_empty(), "unclosed elements");
    root.expect("a root element")
}

/// `value` as an [`AbsoluteUrl`]; panics if it is not one.
pub(super) fn url(value: &str) -> AbsoluteUrl {
    AbsoluteUrl::parse(value).unwrap()
}
