//! Prints the element tree of a Matroska file or stream: `cargo run -p kvs-mkv --example mkvtree FILE`.

use kvs_mkv::ebml::{self, id};

fn is_master(id: u32) -> bool {
    matches!(
        id,
        id::EBML
            | id::SEGMENT
            | id::INFO
            | id::TRACKS
            | id::TRACK_ENTRY
            | id::VIDEO
            | id::AUDIO
            | id::CLUSTER
            | id::BLOCK_GROUP
            | id::TAGS
            | id::TAG
            | id::SIMPLE_TAG
            | id::TARGETS
            | id::SEEK_HEAD
            | id::CUES
    )
}

fn walk(data: &[u8], mut pos: usize, end: usize, depth: usize, base: usize) -> usize {
    while pos < end {
        let Ok(Some(h)) = ebml::read_element_header(&data[pos..end]) else {
            println!(
                "{:indent$}@{} <unreadable>",
                "",
                base + pos,
                indent = depth * 2
            );
            return end;
        };
        let body = pos + h.header_len;
        let size = h.size.map(|s| s as usize);
        let label = match size {
            Some(s) => format!("size={s}"),
            None => "size=unknown".to_owned(),
        };
        let body_end = size.map_or(end, |s| (body + s).min(end));
        let detail = if is_master(h.id) {
            String::new()
        } else {
            let b = &data[body..body_end];
            match h.id {
                id::TAG_NAME
                | id::TAG_STRING
                | id::CODEC_ID
                | id::DOC_TYPE
                | id::NAME
                | id::MUXING_APP
                | id::WRITING_APP
                | id::TITLE => {
                    format!(" = '{}'", ebml::read_str(b))
                }
                id::SIMPLE_BLOCK => kvs_mkv::stream::parse_block_header(b, true)
                    .map(|i| {
                        format!(
                            " track={} rel={} key={}",
                            i.track, i.rel_timecode, i.keyframe
                        )
                    })
                    .unwrap_or_default(),
                _ if b.len() <= 8 => format!(" = {}", ebml::read_uint(b).unwrap_or(0)),
                _ => String::new(),
            }
        };
        println!(
            "{:indent$}@{} {:X} {label}{detail}",
            "",
            base + pos,
            h.id,
            indent = depth * 2
        );
        if is_master(h.id) {
            if size.is_none() {
                // Unknown size: children follow until a sibling-level element; recurse over the rest.
                return walk(data, body, end, depth + 1, base);
            }
            walk(data, body, body_end, depth + 1, base);
        }
        pos = body_end;
    }
    end
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: mkvtree FILE");
        std::process::exit(2);
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    walk(&data, 0, data.len(), 0, 0);
}
