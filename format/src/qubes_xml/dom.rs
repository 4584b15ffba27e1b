//! A small, bounded element tree built from quick-xml events (SPEC.md XML-4).
//!
//! Only what qubes.xml needs: element names, attributes and the text of leaf elements.
//! Refused: DOCTYPE (and so every entity declaration), references other than the five
//! predefined entities and character references, control characters, mixed content,
//! several roots, a non-UTF-8 document or encoding declaration. Bounded: input length
//! (LIM-4), nesting depth (LIM-15), value length (LIM-16), element count (LIM-24),
//! attributes per element (LIM-25).
//! Elements deeper than [`KEEP_DEPTH`] are checked but not stored.

use quick_xml::encoding::Decoder;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::bail;
use crate::error::{Error, Result};
use crate::limits::{
    MAX_QUBES_XML_LEN, MAX_XML_ATTRIBUTES, MAX_XML_DEPTH, MAX_XML_ELEMENTS, MAX_XML_VALUE_LEN,
};

/// Deepest element kept in the tree: `qubes/domains/domain/devices/device/option`.
const KEEP_DEPTH: usize = 6;

/// One element: name, attributes in document order, children, and text (`None` when the
/// element is empty or has child elements, like lxml's `.text` for qubes.xml shapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
    pub text: Option<String>,
}

impl Node {
    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Child elements named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The only child named `name`: `Ok(None)` if absent, Malformed if repeated.
    pub fn single_child(&self, name: &str) -> Result<Option<&Node>> {
        let mut it = self.children.iter().filter(|c| c.name == name);
        let first = it.next();
        if it.next().is_some() {
            bail!(
                Malformed,
                "qubes.xml: <{}> has more than one <{name}>",
                self.name
            );
        }
        Ok(first)
    }
}

struct Frame {
    /// `None` for elements deeper than [`KEEP_DEPTH`] (checked, not stored).
    node: Option<Node>,
    text: String,
    has_children: bool,
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn xml_err(e: impl std::fmt::Display) -> Error {
    Error::malformed(format!("qubes.xml: not well-formed XML: {e}"))
}

/// Refuse characters XML 1.0 does not allow (C0 controls except tab, LF, CR; U+FFFE/FFFF).
fn check_chars(s: &str) -> Result<()> {
    if let Some(c) = s.chars().find(|&c| {
        (c < '\u{20}' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
    }) {
        bail!(
            Malformed,
            "qubes.xml: character U+{:04X} is not allowed in XML",
            u32::from(c)
        );
    }
    Ok(())
}

fn check_value_len(len: usize) -> Result<()> {
    if len > MAX_XML_VALUE_LEN {
        bail!(
            LimitExceeded,
            "qubes.xml: value longer than {MAX_XML_VALUE_LEN} bytes (LIM-16)"
        );
    }
    Ok(())
}

fn element(start: &BytesStart<'_>, decoder: Decoder, keep: bool) -> Result<Option<Node>> {
    let name = std::str::from_utf8(start.name().as_ref())
        .map_err(xml_err)?
        .to_owned();
    let mut attrs = Vec::new();
    // `attributes()` checks for duplicate attribute names.
    for (i, attr) in start.attributes().enumerate() {
        if i >= MAX_XML_ATTRIBUTES {
            bail!(
                LimitExceeded,
                "qubes.xml: more than {MAX_XML_ATTRIBUTES} attributes on one element (LIM-25)"
            );
        }
        let attr = attr.map_err(xml_err)?;
        let key = std::str::from_utf8(attr.key.as_ref()).map_err(xml_err)?;
        check_value_len(attr.value.len())?;
        if attr.value.contains(&b'<') {
            bail!(Malformed, "qubes.xml: '<' in an attribute value");
        }
        // Only the five predefined entities and character references resolve.
        let value = attr
            .decode_and_unescape_value_with(decoder, quick_xml::escape::resolve_xml_entity)
            .map_err(xml_err)?;
        check_chars(&value)?;
        if keep {
            attrs.push((key.to_owned(), value.into_owned()));
        }
    }
    Ok(keep.then_some(Node {
        name,
        attrs,
        children: Vec::new(),
        text: None,
    }))
}

/// Parse `untrusted` into its root element, enforcing XML-4.
pub(crate) fn parse(untrusted: &[u8]) -> Result<Node> {
    if u64::try_from(untrusted.len()).map_or(true, |n| n > MAX_QUBES_XML_LEN) {
        bail!(
            LimitExceeded,
            "qubes.xml: longer than {MAX_QUBES_XML_LEN} bytes (LIM-4)"
        );
    }
    let text = std::str::from_utf8(untrusted)
        .map_err(|e| Error::malformed(format!("qubes.xml: not UTF-8: {e}")))?;
    check_chars(text)?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut elements: usize = 0;

    loop {
        let event = reader.read_event().map_err(xml_err)?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let depth = stack.len().saturating_add(1);
                if depth > MAX_XML_DEPTH {
                    bail!(
                        LimitExceeded,
                        "qubes.xml: elements nested deeper than {MAX_XML_DEPTH} (LIM-15)"
                    );
                }
                elements = elements.saturating_add(1);
                if elements > MAX_XML_ELEMENTS {
                    bail!(
                        LimitExceeded,
                        "qubes.xml: more than {MAX_XML_ELEMENTS} elements (LIM-24)"
                    );
                }
                match stack.last_mut() {
                    Some(parent) => {
                        if !parent.text.chars().all(is_xml_space) {
                            bail!(Malformed, "qubes.xml: mixed text and element content");
                        }
                        parent.text.clear();
                        parent.has_children = true;
                    }
                    None => {
                        if root.is_some() {
                            bail!(Malformed, "qubes.xml: more than one root element");
                        }
                    }
                }
                let parent_kept = stack.last().is_none_or(|f| f.node.is_some());
                let node = element(start, reader.decoder(), parent_kept && depth <= KEEP_DEPTH)?;
                let frame = Frame {
                    node,
                    text: String::new(),
                    has_children: false,
                };
                if matches!(event, Event::Start(_)) {
                    stack.push(frame);
                } else {
                    close(&mut stack, &mut root, frame);
                }
            }
            Event::End(_) => {
                // quick-xml checks that the end tag matches the open one.
                let Some(frame) = stack.pop() else {
                    bail!(Malformed, "qubes.xml: unmatched end tag");
                };
                close(&mut stack, &mut root, frame);
            }
            Event::Text(t) => {
                let s = t.xml10_content().map_err(xml_err)?;
                push_text(&mut stack, &s)?;
            }
            Event::CData(t) => {
                let s = std::str::from_utf8(&t).map_err(xml_err)?;
                push_text(&mut stack, s)?;
            }
            Event::GeneralRef(r) => {
                let c = if r.is_char_ref() {
                    match r.resolve_char_ref().map_err(xml_err)? {
                        Some(c) => c,
                        None => bail!(Malformed, "qubes.xml: bad character reference"),
                    }
                } else {
                    match r.as_ref() {
                        b"lt" => '<',
                        b"gt" => '>',
                        b"amp" => '&',
                        b"apos" => '\'',
                        b"quot" => '"',
                        other => bail!(
                            Malformed,
                            "qubes.xml: undefined entity &{};",
                            String::from_utf8_lossy(other)
                        ),
                    }
                };
                let mut buf = [0u8; 4];
                let s: &str = c.encode_utf8(&mut buf);
                check_chars(s)?;
                if stack.is_empty() {
                    bail!(Malformed, "qubes.xml: reference outside the root element");
                }
                push_text(&mut stack, s)?;
            }
            Event::DocType(_) => {
                bail!(Unsupported, "qubes.xml: DOCTYPE/DTD is not allowed (XML-4)");
            }
            Event::Decl(d) => {
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(xml_err)?;
                    if !enc.eq_ignore_ascii_case(b"utf-8") && !enc.eq_ignore_ascii_case(b"utf8") {
                        bail!(
                            Unsupported,
                            "qubes.xml: encoding {:?} is not UTF-8",
                            String::from_utf8_lossy(&enc)
                        );
                    }
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        // XML-4: the entry holding the document is complete, so a document cut short
        // is not well-formed.
        bail!(Malformed, "qubes.xml: document ends inside an element");
    }
    root.ok_or_else(|| Error::malformed("qubes.xml: no root element"))
}

fn push_text(stack: &mut [Frame], s: &str) -> Result<()> {
    let Some(frame) = stack.last_mut() else {
        if !s.chars().all(is_xml_space) {
            bail!(Malformed, "qubes.xml: text outside the root element");
        }
        return Ok(());
    };
    if frame.has_children {
        if !s.chars().all(is_xml_space) {
            bail!(Malformed, "qubes.xml: mixed text and element content");
        }
        return Ok(());
    }
    check_value_len(frame.text.len().saturating_add(s.len()))?;
    if frame.node.is_some() {
        frame.text.push_str(s);
    }
    Ok(())
}

fn close(stack: &mut [Frame], root: &mut Option<Node>, frame: Frame) {
    let Some(mut node) = frame.node else { return };
    if !frame.has_children && !frame.text.is_empty() {
        node.text = Some(frame.text);
    }
    match stack.last_mut() {
        Some(parent) => {
            if let Some(p) = parent.node.as_mut() {
                p.children.push(node);
            }
        }
        None => *root = Some(node),
    }
}
