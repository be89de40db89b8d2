//! Readers for the formats users already have: plain text and `{"text": …}` JSONL, image-caption
//! JSONL, WebDataset tar shards, OBELICS-style interleaved JSONL, and folders of HTML pages.
//!
//! Every reader is an iterator of `Result<Document, BadRecord>`: a caller can stop at the first
//! bad record, or skip and count them. Readers stream (one line, one page or one tar member at a
//! time), check only what is cheap (an image file exists, an icon is small), and never panic on
//! bad input; [`check`] reads a whole source and also decodes every image.

mod caption;
mod check;
mod html;
mod interleaved;
mod jsonl;
mod markup;
mod sft;
mod text;
mod walk;
mod webdataset;

pub use caption::CaptionSource;
pub use check::{CheckReport, SourceFormat, SourceOptions, UnknownSourceFormat, check, open};
pub use html::HtmlSource;
pub use interleaved::InterleavedSource;
pub use jsonl::ImagePaths;
pub use sft::{Conversation, SftSource};
pub use text::TextSource;
pub use webdataset::WebDatasetSource;

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small files the tests of every reader write.

    use std::path::Path;

    use image::{Rgb, RgbImage};

    /// PNG bytes of a `width`×`height` image of one colour.
    pub(crate) fn png_bytes(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let img = RgbImage::from_pixel(width, height, Rgb([200, 100, 50]));
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        bytes
    }

    /// Writes a `width`×`height` PNG at `path`, creating its folder.
    pub(crate) fn write_png(path: &Path, width: u32, height: u32) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, png_bytes(width, height)).unwrap();
    }

    /// Writes `contents` at `path`, creating its folder.
    pub(crate) fn write(path: &Path, contents: impl AsRef<[u8]>) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, contents).unwrap();
    }
}
