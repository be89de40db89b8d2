//! Image pre- and postprocessing as Meta's Chameleon does it: RGBA composited over white, the
//! short side resized with Lanczos, a centre crop, pixels scaled to [-1, 1]; and back: clamp,
//! then 8-bit RGB.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Rgb, RgbImage, RgbaImage};

/// An image that cannot be read or written; names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Unreadable, truncated or not an image.
    #[error("{}: cannot decode image: {reason}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Could not be written.
    #[error("{}: cannot write image: {reason}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Pixels of one image, channel-first `[3, side, side]`, in [-1, 1].
pub type Pixels = Vec<f32>;

/// The largest image this toolkit decodes: 16,384 pixels a side, 64 megapixels in all.
pub const MAX_SIDE: u32 = 16_384;
/// The most pixels an image may have (an 8K photo has about 33 million).
pub const MAX_PIXELS: u64 = 64 << 20;
/// The most elongated image accepted, long side over short side. Preprocessing scales the short
/// side to the model's resolution, so a 10,000,000×1 strip would become 5 billion pixels wide.
pub const MAX_ASPECT: u32 = 32;

/// Decodes an image file (PNG, JPEG, WebP) and preprocesses it to `side`×`side`.
pub fn load_image(path: &Path, side: usize) -> Result<Pixels, ImageError> {
    let decode = |reason: String| ImageError::Decode { path: path.to_path_buf(), reason };
    let reader = ImageReader::open(path).map_err(|e| decode(e.to_string()))?;
    let image = decode_bounded(reader).map_err(decode)?;
    Ok(preprocess(&image, side))
}

/// Decodes image bytes (PNG, JPEG, WebP); `origin` names them in errors.
pub fn decode_image(bytes: &[u8], origin: &Path, side: usize) -> Result<Pixels, ImageError> {
    let image = decode_bounded(ImageReader::new(std::io::Cursor::new(bytes)))
        .map_err(|reason| ImageError::Decode { path: origin.to_path_buf(), reason })?;
    Ok(preprocess(&image, side))
}

/// Decodes within [`MAX_SIDE`], [`MAX_PIXELS`] and [`MAX_ASPECT`]: the decoder refuses sizes
/// beyond the first two from the header, before it allocates the pixels.
fn decode_bounded<R: std::io::BufRead + std::io::Seek>(reader: ImageReader<R>) -> Result<DynamicImage, String> {
    let mut reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // Decoded RGBA at 16 bits per channel, the widest the decoders produce.
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => format!(
            "the image is larger than this toolkit decodes ({MAX_SIDE} pixels a side, {} megapixels): {e}",
            MAX_PIXELS >> 20
        ),
        e => e.to_string(),
    })?;
    let (w, h) = (image.width(), image.height());
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format!("{w}×{h} pixels is more than this toolkit decodes ({} megapixels)", MAX_PIXELS >> 20));
    }
    if w.max(h) > MAX_ASPECT.saturating_mul(w.min(h)) {
        return Err(format!("{w}×{h} pixels is too elongated to centre-crop into a square (at most {MAX_ASPECT}:1)"));
    }
    Ok(image)
}

/// Whitens transparency, resizes the short side to `side` (Lanczos3), centre-crops, and scales
/// to [-1, 1], channel-first.
pub fn preprocess(image: &DynamicImage, side: usize) -> Pixels {
    let rgb = over_white(&image.to_rgba8());
    let (w, h) = rgb.dimensions();
    let scale = side as f64 / w.min(h) as f64;
    let (nw, nh) =
        (((w as f64 * scale).round() as u32).max(side as u32), ((h as f64 * scale).round() as u32).max(side as u32));
    let resized = if (nw, nh) == (w, h) { rgb } else { image::imageops::resize(&rgb, nw, nh, FilterType::Lanczos3) };
    let (x0, y0) = ((nw - side as u32) / 2, (nh - side as u32) / 2);
    let mut out = vec![0.0; 3 * side * side];
    for y in 0..side {
        for x in 0..side {
            let p = resized.get_pixel(x0 + x as u32, y0 + y as u32);
            for c in 0..3 {
                out[c * side * side + y * side + x] = p[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    out
}

/// Alpha-composites over a white background.
fn over_white(rgba: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y);
        let a = p[3] as f32 / 255.0;
        let blend = |c: u8| (c as f32 * a + 255.0 * (1.0 - a)).round().clamp(0.0, 255.0) as u8;
        Rgb([blend(p[0]), blend(p[1]), blend(p[2])])
    })
}

/// Channel-first pixels (nominally [-1, 1], clamped here) to an 8-bit RGB image.
pub fn postprocess(pixels: &[f32], side: usize) -> RgbImage {
    RgbImage::from_fn(side as u32, side as u32, |x, y| {
        let at = |c: usize| {
            let v = pixels[c * side * side + y as usize * side + x as usize].clamp(-1.0, 1.0);
            ((v + 1.0) * 127.5).round() as u8
        };
        Rgb([at(0), at(1), at(2)])
    })
}

/// Writes an RGB image as PNG.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<(), ImageError> {
    image.save(path).map_err(|e| ImageError::Write { path: path.to_path_buf(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    #[test]
    fn transparent_pixels_become_white_and_opaque_ones_keep_their_colour() {
        let mut img = RgbaImage::new(4, 4);
        img.put_pixel(0, 0, Rgba([255, 0, 0, 255]));
        img.put_pixel(1, 0, Rgba([0, 0, 0, 0]));
        img.put_pixel(2, 0, Rgba([0, 0, 0, 128]));
        let px = preprocess(&DynamicImage::ImageRgba8(img), 4);
        let at = |c: usize, x: usize| px[c * 16 + x];
        assert_eq!((at(0, 0), at(1, 0), at(2, 0)), (1.0, -1.0, -1.0));
        assert_eq!((at(0, 1), at(1, 1), at(2, 1)), (1.0, 1.0, 1.0));
        assert!(at(0, 2).abs() < 0.02, "half-transparent black is mid grey: {}", at(0, 2));
    }

    #[test]
    fn short_side_is_resized_then_centre_cropped() {
        // 8 wide, 4 high: left half red, right half blue, a green column in the middle two.
        let img = RgbaImage::from_fn(8, 4, |x, _| match x {
            3 | 4 => Rgba([0, 255, 0, 255]),
            x if x < 3 => Rgba([255, 0, 0, 255]),
            _ => Rgba([0, 0, 255, 255]),
        });
        let px = preprocess(&DynamicImage::ImageRgba8(img), 4);
        assert_eq!(px.len(), 3 * 16);
        // Crop keeps columns 2..6: red, green, green, blue.
        let row: Vec<[f32; 3]> = (0..4).map(|x| [px[x], px[16 + x], px[32 + x]]).collect();
        assert_eq!(row, vec![[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]);
    }

    #[test]
    fn postprocess_clamps_and_round_trips_8_bit_values() {
        let side = 2;
        let mut px = vec![0.0f32; 12];
        px[0] = 5.0;
        px[1] = -5.0;
        px[2] = 20.0 / 127.5 - 1.0;
        let img = postprocess(&px, side);
        assert_eq!(img.get_pixel(0, 0)[0], 255);
        assert_eq!(img.get_pixel(1, 0)[0], 0);
        assert_eq!(img.get_pixel(0, 1)[0], 20);
    }

    #[test]
    fn a_truncated_png_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.png");
        let mut bytes = Vec::new();
        let img = RgbImage::from_pixel(16, 16, Rgb([10, 20, 30]));
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_image(&path, 8).unwrap_err().to_string();
        assert!(err.contains("cut.png"), "{err}");
        std::fs::write(&path, b"not an image at all").unwrap();
        assert!(load_image(&path, 8).unwrap_err().to_string().contains("cut.png"));
        assert!(load_image(&dir.path().join("missing.png"), 8).unwrap_err().to_string().contains("missing.png"));
    }

    /// A valid PNG of `w`×`h` grey pixels whose rows are compressed down to almost nothing.
    fn png_of(w: u32, h: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let img = image::GrayImage::new(w, h);
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        bytes
    }

    #[test]
    fn huge_or_elongated_images_are_refused_before_the_resize_allocates() {
        let origin = Path::new("strip.png");
        // 10,000,000×1 aborted with a 30 GB allocation in the resize; the header alone says so.
        let header_only = crate::fixtures::png_declaring(10_000_000, 1);
        let err = decode_image(&header_only, origin, 8).unwrap_err().to_string();
        assert!(err.contains("strip.png") && err.contains("larger than"), "{err}");
        let err = decode_image(&png_of(4000, 10), origin, 8).unwrap_err().to_string();
        assert!(err.contains("strip.png") && err.contains("elongated"), "{err}");
        assert_eq!(decode_image(&png_of(320, 10), origin, 8).unwrap().len(), 3 * 64);
    }
}
