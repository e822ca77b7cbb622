//! Profile pictures: an uploaded PNG, JPEG or WebP decoded (its declared size checked first),
//! cropped to a square, resized to 256×256 and re-encoded as PNG, which keeps only the pixels
//! (no metadata, nothing hidden after them); and the picture of an account without one,
//! drawn from its id.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits, Rgb, RgbImage};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// The side of every picture served, in pixels.
pub const SIDE: u32 = 256;

/// Memory a decoder may allocate for one picture: 8,000 × 8,000 pixels of RGBA, 8 bits each.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// Pictures decoded at once at most (each may take [`MAX_DECODE_BYTES`]); more wait.
pub static DECODING: Semaphore = Semaphore::const_new(2);

/// `bytes` as a 256×256 PNG, or why not.
pub fn reencode(bytes: &[u8], max_side: u32) -> Result<Vec<u8>, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| "the picture could not be read".to_owned())?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        _ => return Err("the picture must be a PNG, JPEG or WebP image".to_owned()),
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = reader;
    reader.limits(limits);
    let image = reader.decode().map_err(|error| match error {
        image::ImageError::Limits(_) => {
            format!("the picture is larger than {max_side}×{max_side} pixels or too big to decode")
        }
        _ => "the picture is not a PNG, JPEG or WebP image that can be read".to_owned(),
    })?;
    png(&image.resize_to_fill(SIDE, SIDE, FilterType::Triangle).into_rgba8().into())
}

/// The picture of an account without one: a 5×5 mirrored pattern of squares in a colour,
/// both from the SHA-256 of its id, on a light ground; the same id, the same picture.
pub fn generated(id: &str) -> Vec<u8> {
    let digest = Sha256::digest(id.as_bytes());
    let colour = Rgb([digest[0] / 2 + 40, digest[1] / 2 + 40, digest[2] / 2 + 40]);
    let ground = Rgb([240, 240, 240]);
    let cell = SIDE / 8; // a 5×5 grid with a margin of 1.5 cells around it
    let margin = (SIDE - 5 * cell) / 2;
    let image = RgbImage::from_fn(SIDE, SIDE, |x, y| {
        let (Some(col), Some(row)) = (x.checked_sub(margin), y.checked_sub(margin)) else {
            return ground;
        };
        let (col, row) = (col / cell, row / cell);
        if col >= 5 || row >= 5 {
            return ground;
        }
        let col = col.min(4 - col); // mirrored: columns 0–2 decide
        let bit = (row * 3 + col) as usize;
        match digest[3 + bit / 8] >> (bit % 8) & 1 {
            1 => colour,
            _ => ground,
        }
    });
    png(&DynamicImage::ImageRgb8(image)).unwrap_or_default()
}

fn png(image: &DynamicImage) -> Result<Vec<u8>, String> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png).map_err(|error| {
        tracing::error!(%error, "encoding a picture failed");
        "the picture could not be encoded".to_owned()
    })?;
    Ok(out.into_inner())
}

/// A strong `ETag` for `png`: part of its SHA-256, quoted.
pub fn etag(png: &[u8]) -> String {
    let digest = Sha256::digest(png);
    let hex: String = digest[..12].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("\"{hex}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_picture_is_a_256_square_png_and_the_same_for_the_same_id() {
        let one = generated(&"a".repeat(32));
        assert_eq!(one, generated(&"a".repeat(32)));
        assert_ne!(one, generated(&"b".repeat(32)));
        let decoded = image::load_from_memory_with_format(&one, ImageFormat::Png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (SIDE, SIDE));
    }

    #[test]
    fn a_picture_is_reencoded_and_garbage_refused() {
        let wide = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 10, Rgb([200, 10, 10])));
        let png_in = png(&wide).unwrap();
        let out = reencode(&png_in, 8_000).unwrap();
        let decoded = image::load_from_memory_with_format(&out, ImageFormat::Png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (SIDE, SIDE));
        assert!(reencode(b"not a picture at all", 8_000).is_err());
        assert!(reencode(&png_in, 20).unwrap_err().contains("larger than"));
    }
}
