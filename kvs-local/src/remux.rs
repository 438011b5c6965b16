//! Media conversion with GStreamer: the archived Matroska (a stream header followed by clusters) becomes an MP4
//! (GetClip) or another container. Everything here blocks: call it from `spawn_blocking`.
//!
//! Pipelines are `appsrc (video/x-matroska) ! matroskademux ! <parser> ! <muxer> ! appsink`, with one branch per
//! track of the stream header. For a traditional MP4 the muxer's output buffers carry their byte offset, which is
//! where they are written in the result, so a muxer that rewrites an earlier header still yields a correct file.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gst::prelude::*;
use kvs_mkv::stream::TrackInfo;

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum RemuxError {
    #[error("GStreamer is not usable: {0}")]
    Init(String),
    #[error("cannot build the conversion pipeline: {0}")]
    Pipeline(String),
    #[error("the media cannot be converted: {0}")]
    Media(String),
    #[error("the conversion did not finish within {0:?}")]
    Timeout(Duration),
}

/// The codec of a track, as far as the playback operations are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    H265,
    Aac,
    /// G.711 A-law or mu-law in MS/ACM (WAVEFORMATEX) framing.
    G711,
}

impl Codec {
    /// The codec of a Matroska codec ID, if it is one playback supports.
    pub fn from_codec_id(id: &str) -> Option<Codec> {
        match id {
            "V_MPEG4/ISO/AVC" => Some(Codec::H264),
            "V_MPEGH/ISO/HEVC" => Some(Codec::H265),
            "A_AAC" => Some(Codec::Aac),
            "A_MS/ACM" => Some(Codec::G711),
            _ => None,
        }
    }

    pub fn is_video(self) -> bool {
        matches!(self, Codec::H264 | Codec::H265)
    }

    /// RFC 6381 codec string for HLS/DASH manifests, from the codec private data.
    pub fn rfc6381(self, codec_private: &[u8]) -> String {
        match self {
            Codec::H264 if codec_private.len() >= 4 => format!(
                "avc1.{:02x}{:02x}{:02x}",
                codec_private[1], codec_private[2], codec_private[3]
            ),
            Codec::H264 => "avc1.42e01e".to_owned(),
            Codec::H265 => "hvc1.1.6.L93.B0".to_owned(),
            Codec::Aac => "mp4a.40.2".to_owned(),
            Codec::G711 => "ulaw".to_owned(),
        }
    }
}

/// A track of the stream header that playback uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackTrack {
    pub number: u64,
    pub codec: Codec,
}

/// The output container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// A traditional MP4 with the moov box before the media (GetClip).
    Mp4,
    /// A fragmented MP4: ftyp + moov (with mvex), then moof + mdat pairs (HLS/DASH), see [`split_fmp4`].
    FragmentedMp4,
    /// MPEG-2 transport stream (HLS MPEG_TS).
    MpegTs,
}

/// Most time a conversion may take; the inputs are bounded (GetClip: 100 MB), so this only stops a stuck pipeline.
pub const CONVERSION_TIMEOUT: Duration = Duration::from_secs(120);

fn init() -> Result<(), RemuxError> {
    gst::init().map_err(|e| RemuxError::Init(e.to_string()))
}

/// The parse-launch description of the pipeline for these tracks.
fn description(tracks: &[PlaybackTrack], container: Container) -> String {
    let has_g711 = tracks.iter().any(|t| t.codec == Codec::G711);
    // mp4mux has no G.711 sink caps; qtmux writes the same box structure and accepts A-law and mu-law.
    let muxer = match container {
        Container::Mp4 if has_g711 => "qtmux name=mux faststart=true",
        Container::Mp4 => "mp4mux name=mux faststart=true",
        // One fragment per key frame interval at most; a KVS fragment starts with a key frame.
        Container::FragmentedMp4 => "mp4mux name=mux streamable=true fragment-duration=3600000",
        Container::MpegTs => "mpegtsmux name=mux",
    };
    let ts = container == Container::MpegTs;
    let mut desc = format!(
        "appsrc name=src format=bytes caps=video/x-matroska ! matroskademux name=demux \
         {muxer} ! appsink name=sink sync=false"
    );
    let (mut video, mut audio) = (0, 0);
    for t in tracks {
        let (pad, parser) = match t.codec {
            Codec::H264 if ts => (
                format!("video_{video}"),
                "h264parse ! video/x-h264,stream-format=byte-stream,alignment=au",
            ),
            Codec::H265 if ts => (
                format!("video_{video}"),
                "h265parse ! video/x-h265,stream-format=byte-stream,alignment=au",
            ),
            Codec::Aac if ts => (
                format!("audio_{audio}"),
                "aacparse ! audio/mpeg,stream-format=adts",
            ),
            Codec::H264 => (format!("video_{video}"), "h264parse"),
            Codec::H265 => (format!("video_{video}"), "h265parse"),
            Codec::Aac => (format!("audio_{audio}"), "aacparse"),
            Codec::G711 => (format!("audio_{audio}"), "identity"),
        };
        if t.codec.is_video() {
            video += 1;
        } else {
            audio += 1;
        }
        desc.push_str(&format!(
            " demux.{pad} ! queue max-size-buffers=0 max-size-time=0 max-size-bytes=0 ! {parser} ! mux."
        ));
    }
    desc
}

/// Converts a Matroska byte stream (chunks in order) holding these tracks to `container`.
pub fn convert(
    input: Vec<Bytes>,
    tracks: &[PlaybackTrack],
    container: Container,
) -> Result<Vec<u8>, RemuxError> {
    init()?;
    let desc = description(tracks, container);
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| RemuxError::Pipeline(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| RemuxError::Pipeline("the description is not a pipeline".into()))?;
    // faststart rewrites its header through buffer offsets; the fragmented and TS muxers only append (their
    // offsets do not describe positions in the output).
    let by_offset = container == Container::Mp4;
    let result = run(&pipeline, input, by_offset);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn element<T: IsA<gst::Element>>(pipeline: &gst::Pipeline, name: &str) -> Result<T, RemuxError> {
    pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<T>().ok())
        .ok_or_else(|| RemuxError::Pipeline(format!("the pipeline has no usable element '{name}'")))
}

fn run(
    pipeline: &gst::Pipeline,
    input: Vec<Bytes>,
    by_offset: bool,
) -> Result<Vec<u8>, RemuxError> {
    let src: gst_app::AppSrc = element(pipeline, "src")?;
    let sink: gst_app::AppSink = element(pipeline, "sink")?;
    let output = Arc::new(Mutex::new(Vec::<u8>::new()));
    let out = output.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let mut out = out.lock().map_err(|_| gst::FlowError::Error)?;
                let offset = buffer.offset();
                if !by_offset || offset == gst::format::Buffers::OFFSET_NONE {
                    out.extend_from_slice(&map);
                } else {
                    let start = usize::try_from(offset).map_err(|_| gst::FlowError::Error)?;
                    let end = start + map.len();
                    if out.len() < end {
                        out.resize(end, 0);
                    }
                    out[start..end].copy_from_slice(&map);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    src.set_property("max-bytes", 0u64);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| RemuxError::Pipeline(format!("cannot start: {e}")))?;
    for chunk in input {
        let buffer = gst::Buffer::from_slice(chunk);
        if src.push_buffer(buffer).is_err() {
            // The pipeline stopped (an error on the bus says why).
            break;
        }
    }
    let _ = src.end_of_stream();
    let bus = pipeline
        .bus()
        .ok_or_else(|| RemuxError::Pipeline("the pipeline has no bus".into()))?;
    let deadline = Instant::now() + CONVERSION_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RemuxError::Timeout(CONVERSION_TIMEOUT));
        }
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(left.as_millis() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                let from = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                return Err(RemuxError::Media(format!("{from}: {}", e.error())));
            }
            _ => {}
        }
    }
    let mut out = output
        .lock()
        .map_err(|_| RemuxError::Media("the output buffer is poisoned".into()))?;
    if out.is_empty() {
        return Err(RemuxError::Media("the muxer produced no output".into()));
    }
    Ok(std::mem::take(&mut *out))
}

/// An ISO BMFF box: its type and where its body and end are in the buffer.
#[derive(Debug, Clone, Copy)]
struct BoxAt {
    kind: [u8; 4],
    start: usize,
    body: usize,
    end: usize,
}

fn boxes(data: &[u8], from: usize, to: usize) -> Result<Vec<BoxAt>, RemuxError> {
    let bad =
        |why: &str| RemuxError::Media(format!("the muxer output is not valid ISO BMFF: {why}"));
    let mut out = Vec::new();
    let mut pos = from;
    while pos < to {
        let head = data
            .get(pos..pos + 8)
            .ok_or_else(|| bad("a box header is truncated"))?;
        let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = [head[4], head[5], head[6], head[7]];
        let (size, header) = match size32 {
            0 => (to - pos, 8),
            1 => {
                let ext = data
                    .get(pos + 8..pos + 16)
                    .ok_or_else(|| bad("a box size is truncated"))?;
                let mut b = [0u8; 8];
                b.copy_from_slice(ext);
                (
                    usize::try_from(u64::from_be_bytes(b))
                        .map_err(|_| bad("a box is too large"))?,
                    16,
                )
            }
            n => (n, 8),
        };
        if size < header || pos + size > to {
            return Err(bad("a box overruns its parent"));
        }
        out.push(BoxAt {
            kind,
            start: pos,
            body: pos + header,
            end: pos + size,
        });
        pos += size;
    }
    Ok(out)
}

/// The parts of a fragmented MP4: the initialization segment (ftyp + moov) and the media (every moof + mdat).
#[derive(Debug, Clone)]
pub struct Fmp4Parts {
    pub init: Vec<u8>,
    pub media: Vec<u8>,
    /// Timescale of each track, by track ID (from the moov's tkhd and mdhd).
    pub timescales: Vec<(u32, u32)>,
}

/// Splits mp4mux's fragmented output into its init and media parts.
pub fn split_fmp4(data: &[u8]) -> Result<Fmp4Parts, RemuxError> {
    let mut init = Vec::new();
    let mut media = Vec::new();
    let mut timescales = Vec::new();
    for b in boxes(data, 0, data.len())? {
        match &b.kind {
            b"ftyp" => init.extend_from_slice(&data[b.start..b.end]),
            b"moov" => {
                init.extend_from_slice(&data[b.start..b.end]);
                for trak in boxes(data, b.body, b.end)?
                    .iter()
                    .filter(|t| &t.kind == b"trak")
                {
                    let mut id = None;
                    let mut scale = None;
                    for c in boxes(data, trak.body, trak.end)? {
                        if &c.kind == b"tkhd" {
                            // version(1) flags(3), then creation/modification times of 4 or 8 bytes, then the ID.
                            let at = c.body + if data[c.body] == 1 { 20 } else { 12 };
                            id = data
                                .get(at..at + 4)
                                .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                        }
                        if &c.kind == b"mdia" {
                            for m in boxes(data, c.body, c.end)?
                                .iter()
                                .filter(|m| &m.kind == b"mdhd")
                            {
                                let at = m.body + if data[m.body] == 1 { 20 } else { 12 };
                                scale = data
                                    .get(at..at + 4)
                                    .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                            }
                        }
                    }
                    if let (Some(id), Some(scale)) = (id, scale) {
                        timescales.push((id, scale));
                    }
                }
            }
            b"moof" | b"mdat" => media.extend_from_slice(&data[b.start..b.end]),
            _ => {}
        }
    }
    if init.is_empty() || media.is_empty() {
        return Err(RemuxError::Media(
            "the fragmented MP4 has no moov or no moof".into(),
        ));
    }
    Ok(Fmp4Parts {
        init,
        media,
        timescales,
    })
}

/// Moves every track fragment of `media` (moof + mdat boxes) later by `offset_ms`, rewriting each tfdt's
/// baseMediaDecodeTime in place. mp4mux starts each conversion at 0; the offset puts the fragment at its place
/// on the session's timeline.
pub fn shift_fmp4(
    media: &mut [u8],
    timescales: &[(u32, u32)],
    offset_ms: u64,
) -> Result<(), RemuxError> {
    let len = media.len();
    for moof in boxes(media, 0, len)?
        .into_iter()
        .filter(|b| &b.kind == b"moof")
    {
        for traf in boxes(media, moof.body, moof.end)?
            .into_iter()
            .filter(|b| &b.kind == b"traf")
        {
            let children = boxes(media, traf.body, traf.end)?;
            let track = children
                .iter()
                .find(|c| &c.kind == b"tfhd")
                .and_then(|c| media.get(c.body + 4..c.body + 8))
                .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            let scale = track
                .and_then(|t| timescales.iter().find(|(id, _)| *id == t))
                .map(|(_, s)| u64::from(*s))
                .ok_or_else(|| {
                    RemuxError::Media("a track fragment names an unknown track".into())
                })?;
            let shift = offset_ms.saturating_mul(scale) / 1000;
            for tfdt in children.iter().filter(|c| &c.kind == b"tfdt") {
                let at = tfdt.body + 4;
                if media[tfdt.body] == 1 {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&media[at..at + 8]);
                    let v = u64::from_be_bytes(b).saturating_add(shift);
                    media[at..at + 8].copy_from_slice(&v.to_be_bytes());
                } else {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&media[at..at + 4]);
                    let v = u64::from(u32::from_be_bytes(b)) + shift;
                    let v = u32::try_from(v).map_err(|_| {
                        RemuxError::Media(format!(
                            "a fragment {offset_ms} ms into the session does not fit a 32-bit decode time"
                        ))
                    })?;
                    media[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    Ok(())
}

/// The tracks playback uses, checked like the service checks a playback session's first fragment: track 1 (the
/// first track) H.264 or H.265 with codec private data, an optional second track AAC or G.711 with codec private
/// data.
pub fn playback_tracks(tracks: &[TrackInfo]) -> Result<Vec<PlaybackTrack>, TrackError> {
    if tracks.is_empty() {
        return Err(TrackError::Unsupported(
            "the stream header has no tracks".into(),
        ));
    }
    let mut out = Vec::new();
    for (i, t) in tracks.iter().take(2).enumerate() {
        let codec = Codec::from_codec_id(&t.codec_id).filter(|c| c.is_video() == (i == 0));
        let Some(codec) = codec else {
            let wanted = if i == 0 {
                "V_MPEG4/ISO/AVC or V_MPEGH/ISO/HEVC"
            } else {
                "A_AAC or A_MS/ACM"
            };
            return Err(TrackError::Unsupported(format!(
                "track {} has codec ID '{}'; playback needs {wanted}",
                t.number, t.codec_id
            )));
        };
        let private = t.codec_private.as_deref().unwrap_or_default();
        if private.is_empty() {
            return Err(TrackError::MissingPrivate(format!(
                "track {} ({}) has no codec private data",
                t.number, t.codec_id
            )));
        }
        check_private(codec, private).map_err(|why| {
            TrackError::InvalidPrivate(format!(
                "the codec private data of track {} ({}) is not valid: {why}",
                t.number, t.codec_id
            ))
        })?;
        out.push(PlaybackTrack {
            number: t.number,
            codec,
        });
    }
    Ok(out)
}

/// Why a stream's tracks cannot be played back; each maps to one of the service's exceptions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    MissingPrivate(String),
    #[error("{0}")]
    InvalidPrivate(String),
}

fn check_private(codec: Codec, p: &[u8]) -> Result<(), String> {
    match codec {
        // AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1): version 1, then profile, compatibility, level.
        Codec::H264 if p.len() < 7 => Err(format!(
            "an AVCDecoderConfigurationRecord has at least 7 bytes, this one {}",
            p.len()
        )),
        Codec::H264 if p[0] != 1 => Err(format!(
            "configurationVersion is {}, not 1 (Annex B start codes are not AVCC)",
            p[0]
        )),
        // HEVCDecoderConfigurationRecord: 23 fixed bytes, version 1.
        Codec::H265 if p.len() < 23 => Err(format!(
            "an HEVCDecoderConfigurationRecord has at least 23 bytes, this one {}",
            p.len()
        )),
        Codec::H265 if p[0] != 1 => Err(format!("configurationVersion is {}, not 1", p[0])),
        // AudioSpecificConfig: at least the object type, frequency index and channel configuration.
        Codec::Aac if p.len() < 2 => Err("an AudioSpecificConfig has at least 2 bytes".into()),
        // WAVEFORMATEX: 16 bytes, format tag 6 (A-law) or 7 (mu-law).
        Codec::G711 if p.len() < 16 => Err(format!(
            "a WAVEFORMATEX has at least 16 bytes, this one {}",
            p.len()
        )),
        Codec::G711 if !matches!(u16::from_le_bytes([p[0], p[1]]), 6 | 7) => Err(format!(
            "format tag {} is neither 6 (A-law) nor 7 (mu-law)",
            u16::from_le_bytes([p[0], p[1]])
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(number: u64, codec_id: &str, private: Option<&[u8]>) -> TrackInfo {
        TrackInfo {
            number,
            uid: number,
            track_type: if codec_id.starts_with('V') { 1 } else { 2 },
            codec_id: codec_id.into(),
            codec_private: private.map(Bytes::copy_from_slice),
            name: None,
            pixel_width: None,
            pixel_height: None,
            sampling_frequency: None,
            channels: None,
            default_duration: None,
        }
    }

    const AVCC: &[u8] = &[1, 0x64, 0, 0x1f, 0xff, 0xe1, 0];

    #[test]
    fn tracks_are_checked_like_the_service() {
        let ok = playback_tracks(&[
            track(1, "V_MPEG4/ISO/AVC", Some(AVCC)),
            track(2, "A_AAC", Some(&[0x12, 0x10])),
        ])
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].codec, Codec::Aac);
        assert!(matches!(
            playback_tracks(&[track(1, "V_VP8", Some(AVCC))]),
            Err(TrackError::Unsupported(m)) if m.contains("V_VP8")
        ));
        assert!(matches!(
            playback_tracks(&[track(1, "V_MPEG4/ISO/AVC", None)]),
            Err(TrackError::MissingPrivate(_))
        ));
        assert!(matches!(
            playback_tracks(&[track(1, "V_MPEG4/ISO/AVC", Some(&[0, 0, 0, 1, 0x67, 0, 0]))]),
            Err(TrackError::InvalidPrivate(m)) if m.contains("configurationVersion is 0")
        ));
        assert!(matches!(
            playback_tracks(&[track(1, "A_AAC", Some(&[0x12, 0x10]))]),
            Err(TrackError::Unsupported(_))
        ));
        assert_eq!(Codec::H264.rfc6381(AVCC), "avc1.64001f");
    }

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    /// moof(traf(tfhd track 1, tfdt version 0 = 5)) + mdat.
    fn fragment() -> Vec<u8> {
        let tfhd = mp4_box(b"tfhd", &[0, 0, 0, 0, 0, 0, 0, 1]);
        let tfdt = mp4_box(b"tfdt", &[0, 0, 0, 0, 0, 0, 0, 5]);
        let traf = mp4_box(b"traf", &[tfhd, tfdt].concat());
        let mut out = mp4_box(b"moof", &traf);
        out.extend(mp4_box(b"mdat", b"media"));
        out
    }

    #[test]
    fn fragments_move_on_the_timeline() {
        let mut media = fragment();
        shift_fmp4(&mut media, &[(1, 90_000)], 2_000).unwrap();
        let tfdt_value = &media[media.len() - 13 - 4..media.len() - 13];
        assert_eq!(
            u32::from_be_bytes(tfdt_value.try_into().unwrap()),
            5 + 180_000
        );
        assert!(media.ends_with(b"media"), "the mdat is untouched");

        // A decode time past 32 bits is refused rather than wrapped.
        let mut media = fragment();
        let e = shift_fmp4(&mut media, &[(1, 90_000)], 48 * 3600 * 1000).unwrap_err();
        assert!(e.to_string().contains("32-bit"), "{e}");
        // A track fragment of a track the init segment does not have is an error.
        assert!(shift_fmp4(&mut fragment(), &[(2, 1000)], 0).is_err());
    }

    #[test]
    fn split_keeps_init_and_media_apart() {
        let mut mdhd = vec![0u8; 24];
        mdhd[12..16].copy_from_slice(&90_000u32.to_be_bytes());
        let mut tkhd = vec![0u8; 24];
        tkhd[12..16].copy_from_slice(&1u32.to_be_bytes());
        let trak = mp4_box(
            b"trak",
            &[
                mp4_box(b"tkhd", &tkhd),
                mp4_box(b"mdia", &mp4_box(b"mdhd", &mdhd)),
            ]
            .concat(),
        );
        let file = [
            mp4_box(b"ftyp", b"iso6"),
            mp4_box(b"moov", &trak),
            mp4_box(b"uuid", b"0123456789abcdef"),
            fragment(),
            mp4_box(b"mfra", b""),
        ]
        .concat();
        let parts = split_fmp4(&file).unwrap();
        assert!(parts.init.starts_with(&mp4_box(b"ftyp", b"iso6")));
        assert_eq!(&parts.init[16..20], b"moov");
        assert_eq!(parts.media, fragment());
        assert_eq!(parts.timescales, vec![(1, 90_000)]);
        assert!(
            split_fmp4(&file[..file.len() - 3]).is_err(),
            "a truncated box is an error"
        );
    }

    #[test]
    fn description_has_a_branch_per_track() {
        let d = description(
            &[
                PlaybackTrack {
                    number: 1,
                    codec: Codec::H265,
                },
                PlaybackTrack {
                    number: 2,
                    codec: Codec::G711,
                },
            ],
            Container::Mp4,
        );
        assert!(d.contains("demux.video_0 ! queue"));
        assert!(d.contains("h265parse ! mux."));
        assert!(d.contains("demux.audio_0 ! queue"));
        assert!(d.contains("qtmux name=mux"));
    }
}

/// The encoding of GetImages output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg { quality: u32 },
    Png,
}

/// Output size of GetImages: either dimension may be left to the source's aspect ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageSize {
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Decodes the video track of a Matroska input (its cluster timed from 0) and, for each wanted offset (ms, in
/// increasing order), encodes the image of the last frame at or before it. `None` where no frame precedes it.
pub fn images(
    input: Vec<Bytes>,
    tracks: &[PlaybackTrack],
    wanted_ms: &[u64],
    format: ImageFormat,
    size: ImageSize,
) -> Result<Vec<Option<Vec<u8>>>, RemuxError> {
    init()?;
    let video = tracks
        .iter()
        .find(|t| t.codec.is_video())
        .ok_or_else(|| RemuxError::Media("the stream has no video track".into()))?;
    let decoder = match video.codec {
        Codec::H265 => "h265parse ! avdec_h265",
        _ => "h264parse ! avdec_h264",
    };
    let desc = format!(
        "appsrc name=src format=bytes caps=video/x-matroska ! matroskademux name=demux \
         demux.video_0 ! queue max-size-buffers=0 max-size-time=0 max-size-bytes=0 ! {decoder} \
         ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| RemuxError::Pipeline(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| RemuxError::Pipeline("the description is not a pipeline".into()))?;
    let picked = pick_frames(&pipeline, input, wanted_ms);
    let _ = pipeline.set_state(gst::State::Null);
    picked?
        .into_iter()
        .map(|s| s.map(|s| encode_image(&s, format, size)).transpose())
        .collect()
}

fn pick_frames(
    pipeline: &gst::Pipeline,
    input: Vec<Bytes>,
    wanted_ms: &[u64],
) -> Result<Vec<Option<gst::Sample>>, RemuxError> {
    let src: gst_app::AppSrc = element(pipeline, "src")?;
    let sink: gst_app::AppSink = element(pipeline, "sink")?;
    src.set_property("max-bytes", 0u64);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| RemuxError::Pipeline(format!("cannot start: {e}")))?;
    for chunk in input {
        if src.push_buffer(gst::Buffer::from_slice(chunk)).is_err() {
            break;
        }
    }
    let _ = src.end_of_stream();
    let bus = pipeline
        .bus()
        .ok_or_else(|| RemuxError::Pipeline("the pipeline has no bus".into()))?;
    let deadline = Instant::now() + CONVERSION_TIMEOUT;
    let mut out: Vec<Option<gst::Sample>> = vec![None; wanted_ms.len()];
    let mut next = 0;
    let mut previous: Option<gst::Sample> = None;
    loop {
        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error])
            && let gst::MessageView::Error(e) = msg.view()
        {
            return Err(RemuxError::Media(e.error().to_string()));
        }
        if Instant::now() > deadline {
            return Err(RemuxError::Timeout(CONVERSION_TIMEOUT));
        }
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(50)) else {
            if sink.is_eos() {
                break;
            }
            continue;
        };
        let pts_ms = sample
            .buffer()
            .and_then(|b| b.pts())
            .map_or(0, |t| t.mseconds());
        while next < wanted_ms.len() && wanted_ms[next] < pts_ms {
            out[next] = previous.clone();
            next += 1;
        }
        previous = Some(sample);
    }
    while next < wanted_ms.len() {
        out[next] = previous.clone();
        next += 1;
    }
    Ok(out)
}

/// Scales and encodes one decoded frame.
fn encode_image(
    sample: &gst::Sample,
    format: ImageFormat,
    size: ImageSize,
) -> Result<Vec<u8>, RemuxError> {
    let mut caps = String::from("video/x-raw");
    if let Some(w) = size.width {
        caps.push_str(&format!(",width={w}"));
    }
    if let Some(h) = size.height {
        caps.push_str(&format!(",height={h}"));
    }
    if size.width.is_some() && size.height.is_some() {
        // Both given: stretch to them, as the service does.
        caps.push_str(",pixel-aspect-ratio=1/1");
    }
    let encoder = match format {
        ImageFormat::Jpeg { quality } => format!("jpegenc quality={quality}"),
        ImageFormat::Png => "pngenc snapshot=true".to_owned(),
    };
    let desc = format!(
        "appsrc name=src format=time ! videoconvert ! videoscale add-borders=false ! {caps} ! {encoder} \
         ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| RemuxError::Pipeline(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| RemuxError::Pipeline("the description is not a pipeline".into()))?;
    let result = (|| {
        let src: gst_app::AppSrc = element(&pipeline, "src")?;
        let sink: gst_app::AppSink = element(&pipeline, "sink")?;
        src.set_caps(sample.caps_owned().as_ref());
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| RemuxError::Pipeline(format!("cannot start: {e}")))?;
        let buffer = sample
            .buffer_owned()
            .ok_or_else(|| RemuxError::Media("a decoded frame has no data".into()))?;
        let _ = src.push_buffer(buffer);
        let _ = src.end_of_stream();
        let image = sink
            .try_pull_sample(gst::ClockTime::from_seconds(CONVERSION_TIMEOUT.as_secs()))
            .ok_or_else(|| RemuxError::Media("the image encoder produced nothing".into()))?;
        let data = image
            .buffer()
            .and_then(|b| b.map_readable().ok().map(|m| m.to_vec()))
            .ok_or_else(|| RemuxError::Media("the image has no data".into()))?;
        Ok(data)
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}
