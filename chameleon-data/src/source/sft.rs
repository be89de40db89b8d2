//! Supervised fine-tuning conversations from JSONL, one a line:
//!
//! ```json
//! {"category": "visual-chat",
//!  "messages": [{"role": "user", "content": [{"image": "img/cat.png"}, {"text": "What is this?"}]},
//!               {"role": "assistant", "content": "A cat."}]}
//! ```
//!
//! `content` is a string or a list of `{"text": …}` and `{"image": path}` parts (paths relative to
//! the JSONL file's folder). Roles alternate `user`, `assistant`, … and end with `assistant`; one
//! leading `system` message is prepended to the first user turn. `category` names the SFT
//! category (the paper's: text, code, visual-chat, image-generation, interleaved-generation,
//! safety; any other name is allowed). A turn becomes its segments followed by
//! [`Segment::EndOfTurn`], except the last answer, which the document's `eos` closes.

use std::path::Path;

use serde_json::{Map, Value};

use crate::document::{BadRecord, DocKind, Document, ImageRef, Location, Segment};
use crate::source::jsonl::{ImagePaths, JsonlRecords, LineOrigin, existing_image, parse_object, string_field};

/// One conversation: its category and its turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Where it came from.
    pub location: Location,
    /// The `category` field.
    pub category: String,
    /// Turns in order: user (prompt), assistant (answer), user, …; each a list of text and image
    /// segments. The last one is the assistant's unless the file holds prompts only.
    pub turns: Vec<Vec<Segment>>,
}

impl Conversation {
    /// The SFT document: turns separated by `end-of-turn`.
    pub fn document(&self) -> Document {
        let mut segments = Vec::new();
        for (i, turn) in self.turns.iter().enumerate() {
            if i > 0 {
                segments.push(Segment::EndOfTurn);
            }
            segments.extend(turn.iter().cloned());
        }
        Document { location: self.location.clone(), kind: DocKind::Sft, segments }
    }

    /// The prompt: every turn but the last answer, and the `end-of-turn` after them that opens
    /// the answer.
    pub fn prompt(&self) -> Vec<Segment> {
        let n = if self.turns.len().is_multiple_of(2) { self.turns.len().saturating_sub(1) } else { self.turns.len() };
        let mut segments = Vec::new();
        for turn in &self.turns[..n] {
            segments.extend(turn.iter().cloned());
            segments.push(Segment::EndOfTurn);
        }
        segments
    }

    /// The final answer, when the conversation has one.
    pub fn answer(&self) -> Option<&[Segment]> {
        self.turns.last().filter(|_| self.turns.len().is_multiple_of(2)).map(Vec::as_slice)
    }
}

/// Reads SFT conversations from a JSONL file or a folder of them, optionally only one category.
pub struct SftSource {
    records: JsonlRecords<Conversation>,
    category: Option<String>,
}

impl SftSource {
    /// Opens a JSONL file, or a folder whose `.jsonl` files are read recursively, sorted by path;
    /// with `category`, other categories' records are passed over (they are not bad records).
    /// Images must lie under `path` unless `images` says anywhere.
    pub fn open(path: &Path, category: Option<&str>, images: ImagePaths) -> Result<Self, BadRecord> {
        let records = JsonlRecords::open(path, conversation_with_answer, images)?;
        Ok(Self { records, category: category.map(str::to_owned) })
    }

    /// Opens a prompt file: like [`SftSource::open`], but a conversation may end with the user's
    /// turn (an assistant's last turn is kept as the reference answer).
    /// A prompt file is the user's own, given on the command line: its images may lie anywhere.
    pub fn open_prompts(path: &Path) -> Result<impl Iterator<Item = Result<Conversation, BadRecord>>, BadRecord> {
        JsonlRecords::open(path, conversation, ImagePaths::Anywhere)
    }
}

impl Iterator for SftSource {
    type Item = Result<Document, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.records.next()? {
                Err(bad) => return Some(Err(bad)),
                Ok(c) if self.category.as_ref().is_some_and(|want| *want != c.category) => continue,
                Ok(c) => return Some(Ok(c.document())),
            }
        }
    }
}

fn conversation_with_answer(jsonl: &LineOrigin<'_>, line: &str, location: Location) -> Result<Conversation, BadRecord> {
    let c = conversation(jsonl, line, location)?;
    if c.answer().is_none() {
        return Err(BadRecord::new(c.location, "the last message must be the assistant's (the answer)"));
    }
    Ok(c)
}

/// One line as a conversation (it may end with the user's turn).
fn conversation(jsonl: &LineOrigin<'_>, line: &str, location: Location) -> Result<Conversation, BadRecord> {
    let object = parse_object(line, &location)?;
    let category = string_field(&object, "category", &location)?.trim().to_owned();
    if category.is_empty() {
        return Err(BadRecord::new(location, "empty `category`"));
    }
    let bad = |reason: String| BadRecord::new(location.clone(), reason);
    let Some(Value::Array(messages)) = object.get("messages") else {
        return Err(bad("missing field `messages` (a list of {\"role\", \"content\"})".into()));
    };
    let mut turns: Vec<Vec<Segment>> = Vec::new();
    let mut system: Vec<Segment> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else { return Err(bad(format!("message {i} is not an object"))) };
        let role = string_field(message, "role", &location).map_err(|e| bad(format!("message {i}: {}", e.reason)))?;
        let segments = content(jsonl, message, &location).map_err(|e| bad(format!("message {i}: {}", e.reason)))?;
        let expected = if turns.len().is_multiple_of(2) { "user" } else { "assistant" };
        match role {
            "system" if i == 0 => system = segments,
            r if r == expected => {
                let mut turn = std::mem::take(&mut system);
                if !turn.is_empty() {
                    turn.push(Segment::Text("\n".into()));
                }
                turn.extend(segments);
                turns.push(turn);
            }
            r => return Err(bad(format!("message {i} has role `{r}` where `{expected}` comes next"))),
        }
    }
    if turns.is_empty() {
        return Err(bad("no user message".into()));
    }
    Ok(Conversation { location, category, turns })
}

/// A message's `content`: a string, or a list of `{"text"}` / `{"image"}` parts.
fn content(
    jsonl: &LineOrigin<'_>,
    message: &Map<String, Value>,
    location: &Location,
) -> Result<Vec<Segment>, BadRecord> {
    let bad = |reason: &str| Err(BadRecord::new(location.clone(), reason.to_owned()));
    let segments = match message.get("content") {
        Some(Value::String(text)) => vec![Segment::Text(text.clone())],
        Some(Value::Array(parts)) => {
            let mut segments = Vec::new();
            for part in parts {
                let Value::Object(part) = part else { return bad("a content part is not an object") };
                match (part.get("text"), part.get("image")) {
                    (Some(Value::String(t)), None) => segments.push(Segment::Text(t.clone())),
                    (None, Some(Value::String(p))) => {
                        segments.push(Segment::Image(ImageRef::File(existing_image(jsonl, p, "image", location)?)))
                    }
                    _ => return bad("a content part must be {\"text\": string} or {\"image\": path}"),
                }
            }
            segments
        }
        None => return bad("missing field `content`"),
        Some(_) => return bad("`content` must be a string or a list of parts"),
    };
    let has_text = segments.iter().any(|s| matches!(s, Segment::Text(t) if !t.trim().is_empty()));
    if !has_text && !segments.iter().any(|s| matches!(s, Segment::Image(_))) {
        return bad("empty content");
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fixtures::{write, write_png};

    #[test]
    fn conversations_become_turns_separated_by_end_of_turn() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("img/cat.png"), 4, 4);
        let jsonl = dir.path().join("sft.jsonl");
        let lines = [
            r#"{"category": "visual-chat", "messages": [{"role": "user", "content": [{"image": "img/cat.png"}, {"text": "What is this?"}]}, {"role": "assistant", "content": "A cat."}]}"#,
            r#"{"category": "text", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Farewell."}]}"#,
        ];
        write(&jsonl, lines.join("\n"));
        let docs: Vec<Document> =
            SftSource::open(&jsonl, None, ImagePaths::Inside).unwrap().map(Result::unwrap).collect();
        assert_eq!(docs.len(), 2);
        assert!(docs.iter().all(|d| d.kind == DocKind::Sft));
        assert_eq!(
            docs[0].segments,
            vec![
                Segment::Image(ImageRef::File(dir.path().join("img/cat.png"))),
                Segment::Text("What is this?".into()),
                Segment::EndOfTurn,
                Segment::Text("A cat.".into()),
            ]
        );
        let t = |s: &str| Segment::Text(s.into());
        assert_eq!(
            docs[1].segments,
            vec![
                t("Be brief."),
                t("\n"),
                t("Hi"),
                Segment::EndOfTurn,
                t("Hello."),
                Segment::EndOfTurn,
                t("Bye"),
                Segment::EndOfTurn,
                t("Farewell.")
            ]
        );
        // One category only.
        let only: Vec<Document> =
            SftSource::open(&jsonl, Some("text"), ImagePaths::Inside).unwrap().map(Result::unwrap).collect();
        assert_eq!(only, docs[1..]);
    }

    #[test]
    fn prompts_may_end_with_the_user_and_split_into_prompt_and_answer() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("p.jsonl");
        let lines = [
            r#"{"category": "text", "messages": [{"role": "user", "content": "Hi"}]}"#,
            r#"{"category": "text", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}"#,
        ];
        write(&jsonl, lines.join("\n"));
        let cs: Vec<Conversation> = SftSource::open_prompts(&jsonl).unwrap().map(Result::unwrap).collect();
        assert_eq!(cs[0].answer(), None);
        assert_eq!(cs[0].prompt(), vec![Segment::Text("Hi".into()), Segment::EndOfTurn]);
        assert_eq!(cs[1].answer(), Some(&[Segment::Text("Hello.".into())][..]));
        assert_eq!(cs[1].prompt(), cs[0].prompt());
        // A prompt-only line is a bad record for training.
        let bad: Vec<_> = SftSource::open(&jsonl, None, ImagePaths::Inside).unwrap().collect();
        assert!(bad[0].as_ref().unwrap_err().reason.contains("must be the assistant's"));
        assert!(bad[1].is_ok());
    }

    #[test]
    fn bad_conversations_are_named_by_line_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("sft.jsonl");
        let lines = [
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
            r#"{"category": "text"}"#,
            r#"{"category": "text", "messages": [{"role": "assistant", "content": "y"}]}"#,
            r#"{"category": "text", "messages": [{"role": "user", "content": [{"image": "gone.png"}]}, {"role": "assistant", "content": "y"}]}"#,
            r#"{"category": "text", "messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}"#,
            r#"{"category": "text", "messages": [{"role": "user", "content": [{"video": "a.mp4"}]}, {"role": "assistant", "content": "y"}]}"#,
            r#"{"category": "", "messages": []}"#,
        ];
        write(&jsonl, lines.join("\n"));
        let out: Vec<_> = SftSource::open(&jsonl, None, ImagePaths::Inside).unwrap().collect();
        let reasons: Vec<String> = out.iter().map(|r| r.as_ref().unwrap_err().to_string()).collect();
        for (i, r) in reasons.iter().enumerate() {
            assert!(r.starts_with(&format!("{}:{}: ", jsonl.display(), i + 1)), "{r}");
        }
        assert!(reasons[0].ends_with("missing field `category`"), "{}", reasons[0]);
        assert!(reasons[1].contains("missing field `messages`"));
        assert!(reasons[2].contains("role `assistant` where `user` comes next"));
        assert!(reasons[3].contains("image file not found") && reasons[3].contains("gone.png"));
        assert!(reasons[4].contains("`content` must be a string or a list"));
        assert!(reasons[5].contains("must be {\"text\": string} or {\"image\": path}"));
        assert!(reasons[6].contains("empty `category`"));
    }
}
