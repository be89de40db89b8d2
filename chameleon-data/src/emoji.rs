//! The image side of the built-in corpus: Twemoji (CC-BY 4.0) with their CLDR names, shipped
//! inside the `twemoji-assets` and `emojis` crates, so nothing is downloaded.

use twemoji_assets::png::PngTwemojiAsset;

/// One emoji: its English name and its 72×72 RGBA PNG.
#[derive(Debug, Clone, Copy)]
pub struct Emoji {
    /// The emoji itself.
    pub emoji: &'static str,
    /// English CLDR name ("waffle", "woman shrugging").
    pub name: &'static str,
    /// PNG bytes.
    pub png: &'static [u8],
    /// Index of the base emoji; skin-tone variants share their base's family, so that a
    /// held-out split by family never shows a variant of a held-out emoji in training.
    pub family: usize,
}

/// Every emoji that has both a name and a Twemoji image, skin-tone variants included, in a
/// fixed order.
pub fn all() -> Vec<Emoji> {
    let mut out = Vec::new();
    for (family, e) in emojis::iter().enumerate() {
        let variants: Vec<&'static emojis::Emoji> = match e.skin_tones() {
            Some(tones) => tones.collect(),
            None => vec![e],
        };
        for v in variants {
            if let Some(asset) = PngTwemojiAsset::from_emoji(v.as_str()) {
                let png: &'static [u8] = asset;
                out.push(Emoji { emoji: v.as_str(), name: v.name(), png, family });
            }
        }
    }
    out
}

impl Emoji {
    /// Whether this emoji belongs to the held-out split: a fixed 1 in `every` families.
    pub fn is_held_out(&self, every: usize) -> bool {
        crate::config::is_held_out(self.family, every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_of_named_emoji_with_pngs() {
        let all = all();
        assert!(all.len() > 3000, "{}", all.len());
        assert!(all.iter().all(|e| !e.name.is_empty() && e.png.starts_with(b"\x89PNG")));
        assert!(all.iter().any(|e| e.name == "waffle"));
        // Skin-tone variants stay on one side of the split.
        let thumbs: Vec<&Emoji> = all.iter().filter(|e| e.name.starts_with("thumbs up")).collect();
        assert!(thumbs.len() > 1);
        assert!(thumbs.iter().all(|e| e.is_held_out(10) == thumbs[0].is_held_out(10)));
        let held = all.iter().filter(|e| e.is_held_out(10)).count();
        assert!(held > all.len() / 20 && held < all.len() / 5, "{held}");
    }
}
