"""Minimal Matroska (EBML) writer and reader for the conformance suite.

The writer builds PutMedia bodies whose every byte the tests control (cluster timecodes, tracks, producer tags,
deliberately broken streams). The reader splits a GetMedia / GetMediaForFragmentList body into its per-fragment
MKV files and reports, for each, the order of its top-level elements, its tags and its cluster, so the tests can
compare the layout with the one the service sends (wire notes section 5).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

# Element IDs, written with their marker bits as they appear on the wire.
EBML = 0x1A45DFA3
EBML_VERSION = 0x4286
EBML_READ_VERSION = 0x42F7
EBML_MAX_ID_LENGTH = 0x42F2
EBML_MAX_SIZE_LENGTH = 0x42F3
DOC_TYPE = 0x4282
DOC_TYPE_VERSION = 0x4287
DOC_TYPE_READ_VERSION = 0x4285
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
INFO = 0x1549A966
SEGMENT_UID = 0x73A4
TIMECODE_SCALE = 0x2AD7B1
DURATION = 0x4489
MUXING_APP = 0x4D80
WRITING_APP = 0x5741
TITLE = 0x7BA9
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_UID = 0x73C5
TRACK_TYPE = 0x83
NAME = 0x536E
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
VIDEO = 0xE0
PIXEL_WIDTH = 0xB0
PIXEL_HEIGHT = 0xBA
AUDIO = 0xE1
SAMPLING_FREQUENCY = 0xB5
CHANNELS = 0x9F
CLUSTER = 0x1F43B675
TIMECODE = 0xE7
POSITION = 0xA7
PREV_SIZE = 0xAB
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
BLOCK_DURATION = 0x9B
REFERENCE_BLOCK = 0xFB
CUES = 0x1C53BB6B
CHAPTERS = 0x1043A770
ATTACHMENTS = 0x1941A469
TAGS = 0x1254C367
TAG = 0x7373
TARGETS = 0x63C0
SIMPLE_TAG = 0x67C8
TAG_NAME = 0x45A3
TAG_STRING = 0x4487
TAG_LANGUAGE = 0x447A
TAG_DEFAULT = 0x4484
VOID = 0xEC
CRC32 = 0xBF

MASTER_IDS = {
    EBML,
    SEGMENT,
    SEEK_HEAD,
    INFO,
    TRACKS,
    TRACK_ENTRY,
    VIDEO,
    AUDIO,
    CLUSTER,
    BLOCK_GROUP,
    CUES,
    CHAPTERS,
    ATTACHMENTS,
    TAGS,
    TAG,
    TARGETS,
    SIMPLE_TAG,
}

# Children of the Segment: seeing one of these closes an open unknown-size Cluster.
LEVEL1_IDS = {SEEK_HEAD, INFO, TRACKS, CLUSTER, CUES, CHAPTERS, ATTACHMENTS, TAGS}

NAMES = {
    EBML: "EBML",
    SEGMENT: "Segment",
    SEEK_HEAD: "SeekHead",
    INFO: "Info",
    TRACKS: "Tracks",
    CLUSTER: "Cluster",
    CUES: "Cues",
    CHAPTERS: "Chapters",
    ATTACHMENTS: "Attachments",
    TAGS: "Tags",
    VOID: "Void",
}

UNKNOWN_SIZE = None


class MkvError(ValueError):
    """The bytes are not the Matroska the reader expects."""


# --------------------------------------------------------------------------------------------------------------
# Writing


def encode_id(element_id: int) -> bytes:
    length = (element_id.bit_length() + 7) // 8
    return element_id.to_bytes(length, "big")


def encode_size(size: int | None, width: int | None = None) -> bytes:
    if size is None:
        return b"\x01\xff\xff\xff\xff\xff\xff\xff"
    if width is None:
        width = 1
        while size >= (1 << (7 * width)) - 1:
            width += 1
    if width > 8:
        raise MkvError(f"element size {size} does not fit in an EBML size field")
    return (size | (1 << (7 * width))).to_bytes(width, "big")


def element(element_id: int, body: bytes) -> bytes:
    return encode_id(element_id) + encode_size(len(body)) + body


def uint_element(element_id: int, value: int) -> bytes:
    length = max(1, (value.bit_length() + 7) // 8)
    return element(element_id, value.to_bytes(length, "big"))


def str_element(element_id: int, value: str) -> bytes:
    return element(element_id, value.encode("utf-8"))


def float_element(element_id: int, value: float) -> bytes:
    return element(element_id, struct.pack(">d", value))


def ebml_header(doc_type: str = "matroska") -> bytes:
    return element(
        EBML,
        uint_element(EBML_VERSION, 1)
        + uint_element(EBML_READ_VERSION, 1)
        + uint_element(EBML_MAX_ID_LENGTH, 4)
        + uint_element(EBML_MAX_SIZE_LENGTH, 8)
        + str_element(DOC_TYPE, doc_type)
        + uint_element(DOC_TYPE_VERSION, 2)
        + uint_element(DOC_TYPE_READ_VERSION, 2),
    )


@dataclass
class Track:
    number: int
    codec_id: str = "V_MPEG4/ISO/AVC"
    track_type: int = 1  # 1 video, 2 audio
    name: str = "kinesis_video"
    codec_private: bytes = b""
    width: int = 160
    height: int = 120

    def encode(self) -> bytes:
        body = (
            uint_element(TRACK_NUMBER, self.number)
            + uint_element(TRACK_UID, self.number)
            + uint_element(TRACK_TYPE, self.track_type)
            + str_element(NAME, self.name)
            + str_element(CODEC_ID, self.codec_id)
        )
        if self.track_type == 1:
            body += element(VIDEO, uint_element(PIXEL_WIDTH, self.width) + uint_element(PIXEL_HEIGHT, self.height))
        else:
            body += element(AUDIO, float_element(SAMPLING_FREQUENCY, 48000.0) + uint_element(CHANNELS, 2))
        if self.codec_private:
            body += element(CODEC_PRIVATE, self.codec_private)
        return element(TRACK_ENTRY, body)


# AVCDecoderConfigurationRecord of a 160x120 Baseline stream, so a consumer that looks at it finds a plausible one.
AVC_CODEC_PRIVATE = bytes.fromhex("0142c00dffe1000a6742c00d9a6140414fb01001000468ce3c80")
AAC_CODEC_PRIVATE = bytes.fromhex("1190")

VIDEO_TRACK = Track(1, "V_MPEG4/ISO/AVC", 1, "kinesis_video", AVC_CODEC_PRIVATE)
AUDIO_TRACK = Track(2, "A_AAC", 2, "audio", AAC_CODEC_PRIVATE)


def segment_header(tracks: list[Track] | None = None, timecode_scale: int = 1_000_000) -> bytes:
    """EBML header, unknown-size Segment start, Info and Tracks: what a producer sends once per PutMedia."""
    tracks = tracks if tracks is not None else [VIDEO_TRACK]
    info = element(
        INFO,
        element(SEGMENT_UID, bytes(range(16)))
        + uint_element(TIMECODE_SCALE, timecode_scale)
        + str_element(TITLE, "kvs-local conformance")
        + str_element(MUXING_APP, "conformance mkv.py")
        + str_element(WRITING_APP, "conformance mkv.py"),
    )
    return (
        ebml_header()
        + encode_id(SEGMENT)
        + encode_size(UNKNOWN_SIZE)
        + info
        + element(TRACKS, b"".join(t.encode() for t in tracks))
    )


@dataclass
class Frame:
    track: int
    rel_timecode: int
    keyframe: bool
    payload: bytes


def simple_block(frame: Frame) -> bytes:
    flags = 0x80 if frame.keyframe else 0x00
    body = encode_size(frame.track) + struct.pack(">hB", frame.rel_timecode, flags) + frame.payload
    return element(SIMPLE_BLOCK, body)


def cluster(timecode: int, frames: list[Frame], known_size: bool = False) -> bytes:
    """A Cluster: one fragment. Unknown size by default, as the C++ producer writes them."""
    body = uint_element(TIMECODE, timecode) + b"".join(simple_block(f) for f in frames)
    if known_size:
        return element(CLUSTER, body)
    return encode_id(CLUSTER) + encode_size(UNKNOWN_SIZE) + body


def tags(pairs: list[tuple[str, str]]) -> bytes:
    """A top-level Tags element with one Tag of SimpleTags, no Targets (the service's shape)."""
    simple = b"".join(
        element(SIMPLE_TAG, str_element(TAG_NAME, name) + str_element(TAG_STRING, value)) for name, value in pairs
    )
    return element(TAGS, element(TAG, simple))


def end_of_fragment_tags() -> bytes:
    """The closing Tags element the C++ producer sends so the last fragment completes without a next Cluster."""
    return tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "1")])


def frame_payload(seed: int, size: int) -> bytes:
    """Deterministic filler that looks like a length-prefixed NAL unit; the server does not decode it."""
    rng = random.Random(seed)
    body = bytes([0x65 if seed % 10 == 0 else 0x41]) + rng.randbytes(max(0, size - 5))
    return struct.pack(">I", len(body)) + body


def video_fragment(timecode: int, frames: int = 5, frame_ms: int = 100, seed: int = 0, size: int = 600) -> bytes:
    """A one-track fragment whose first frame is a key frame, frames spaced frame_ms apart."""
    return cluster(
        timecode,
        [Frame(1, i * frame_ms, i == 0, frame_payload(seed * 1000 + i, size)) for i in range(frames)],
    )


def av_fragment(timecode: int, frames: int = 5, frame_ms: int = 100, seed: int = 0) -> bytes:
    out: list[Frame] = []
    for i in range(frames):
        out.append(Frame(1, i * frame_ms, i == 0, frame_payload(seed * 1000 + i, 500)))
        out.append(Frame(2, i * frame_ms + 10, False, frame_payload(seed * 1000 + 500 + i, 120)))
    return cluster(timecode, out)


# --------------------------------------------------------------------------------------------------------------
# Reading


def read_vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int | None, int]:
    """Returns (value, length); value None means the all-ones 'unknown' size."""
    if pos >= len(data):
        raise MkvError(f"truncated variable-length integer at offset {pos}")
    first = data[pos]
    if first == 0:
        raise MkvError(f"invalid variable-length integer (first byte 0) at offset {pos}")
    length = 1
    mask = 0x80
    while not first & mask:
        mask >>= 1
        length += 1
    if pos + length > len(data):
        raise MkvError(f"truncated variable-length integer at offset {pos}")
    raw = int.from_bytes(data[pos : pos + length], "big")
    if keep_marker:
        return raw, length
    value = raw & ((1 << (7 * length)) - 1)
    if value == (1 << (7 * length)) - 1:
        return None, length
    return value, length


@dataclass
class Element:
    id: int
    offset: int
    header_len: int
    size: int | None
    body: bytes  # empty for master elements (their children follow in the token list)
    depth_hint: str = ""

    @property
    def name(self) -> str:
        return NAMES.get(self.id, f"0x{self.id:X}")


def tokenize(data: bytes) -> list[Element]:
    """Flattens the stream: master elements become one token and their children follow; others carry their body.

    Unknown sizes are fine because Matroska IDs are unique per level: the caller groups tokens by ID.
    """
    out: list[Element] = []
    pos = 0
    while pos < len(data):
        element_id, id_len = read_vint(data, pos, keep_marker=True)
        if id_len > 4:
            raise MkvError(f"element ID longer than 4 bytes at offset {pos}")
        size, size_len = read_vint(data, pos + id_len, keep_marker=False)
        header_len = id_len + size_len
        assert element_id is not None
        if element_id in MASTER_IDS:
            out.append(Element(element_id, pos, header_len, size, b""))
            pos += header_len
            continue
        if size is None:
            raise MkvError(f"non-master element 0x{element_id:X} with unknown size at offset {pos}")
        end = pos + header_len + size
        if end > len(data):
            raise MkvError(f"element 0x{element_id:X} at offset {pos} runs past the end of the data")
        out.append(Element(element_id, pos, header_len, size, data[pos + header_len : end]))
        pos = end
    return out


@dataclass
class Block:
    track: int
    rel_timecode: int
    keyframe: bool
    payload: bytes


@dataclass
class TagsInfo:
    pairs: list[tuple[str, str]]
    has_targets: bool
    value_element_ids: list[int]

    def get(self, name: str) -> str | None:
        for k, v in self.pairs:
            if k == name:
                return v
        return None


@dataclass
class FragmentFile:
    """One complete MKV file of a GetMedia chain."""

    raw: bytes
    layout: list[str] = field(default_factory=list)
    tags: list[TagsInfo] = field(default_factory=list)
    cluster_timecode: int | None = None
    blocks: list[Block] = field(default_factory=list)
    track_numbers: list[int] = field(default_factory=list)
    codec_ids: list[str] = field(default_factory=list)
    timecode_scale: int | None = None
    doc_type: str | None = None
    cluster_raw: bytes = b""

    def tag(self, name: str) -> str | None:
        for t in self.tags:
            value = t.get(name)
            if value is not None:
                return value
        return None

    def all_tag_names(self) -> list[str]:
        return [k for t in self.tags for k, _ in t.pairs]


def _parse_tags(tokens: list[Element], start: int) -> tuple[TagsInfo, int]:
    """Reads the Tags element starting at tokens[start]; returns it and the index after its last child."""
    tags_el = tokens[start]
    pairs: list[tuple[str, str]] = []
    ids: list[int] = []
    has_targets = False
    i = start + 1
    end_offset = tags_el.offset + tags_el.header_len + tags_el.size if tags_el.size is not None else None
    name: str | None = None
    while i < len(tokens):
        t = tokens[i]
        if end_offset is not None and t.offset >= end_offset:
            break
        if end_offset is None and t.id in LEVEL1_IDS | {EBML}:
            break
        if t.id == TARGETS:
            has_targets = True
        elif t.id == TAG_NAME:
            name = t.body.decode("utf-8", "replace")
        elif t.id in (TAG_STRING, 0x4485):  # TagString or TagBinary
            ids.append(t.id)
            pairs.append((name or "", t.body.decode("utf-8", "replace")))
            name = None
        i += 1
    return TagsInfo(pairs, has_targets, ids), i


def split_fragments(data: bytes) -> list[FragmentFile]:
    """Splits a chain of MKV files (each starting with an EBML header) and describes each one."""
    tokens = tokenize(data)
    starts = [i for i, t in enumerate(tokens) if t.id == EBML]
    if not starts:
        if data:
            raise MkvError("no EBML header in the data")
        return []
    if starts[0] != 0:
        raise MkvError(f"data before the first EBML header (first element {tokens[0].name})")
    out: list[FragmentFile] = []
    for n, s in enumerate(starts):
        e = starts[n + 1] if n + 1 < len(starts) else len(tokens)
        raw_end = tokens[e].offset if e < len(tokens) else len(data)
        frag = FragmentFile(raw=data[tokens[s].offset : raw_end])
        i = s
        in_cluster = False
        cluster_start_offset = None
        while i < e:
            t = tokens[i]
            if t.id in LEVEL1_IDS or t.id in (EBML, SEGMENT):
                if in_cluster and cluster_start_offset is not None:
                    frag.cluster_raw = data[cluster_start_offset : t.offset]
                    in_cluster = False
                frag.layout.append(t.name)
            if t.id == DOC_TYPE:
                frag.doc_type = t.body.decode()
            elif t.id == TIMECODE_SCALE:
                frag.timecode_scale = int.from_bytes(t.body, "big")
            elif t.id == TRACK_NUMBER:
                frag.track_numbers.append(int.from_bytes(t.body, "big"))
            elif t.id == CODEC_ID:
                frag.codec_ids.append(t.body.decode())
            elif t.id == CLUSTER:
                in_cluster = True
                cluster_start_offset = t.offset
            elif t.id == TIMECODE:
                frag.cluster_timecode = int.from_bytes(t.body, "big")
            elif t.id in (SIMPLE_BLOCK, BLOCK):
                track, tl = read_vint(t.body, 0, keep_marker=False)
                rel, flags = struct.unpack(">hB", t.body[tl : tl + 3])
                frag.blocks.append(Block(track or 0, rel, bool(flags & 0x80), t.body[tl + 3 :]))
            if t.id == TAGS:
                info, nxt = _parse_tags(tokens, i)
                frag.tags.append(info)
                i = nxt
                continue
            i += 1
        if in_cluster and cluster_start_offset is not None:
            frag.cluster_raw = data[cluster_start_offset:raw_end]
        out.append(frag)
    return out


def parse_putmedia_body(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Splits a single-segment producer stream into its header bytes and (cluster timecode, cluster bytes) pairs.

    Top-level Tags between clusters end the cluster before them and are not returned.
    """
    tokens = tokenize(data)
    clusters: list[tuple[int, bytes]] = []
    first_cluster = next((t.offset for t in tokens if t.id == CLUSTER), len(data))
    header = data[:first_cluster]
    current: int | None = None
    tc = 0
    for t in tokens:
        if t.id in LEVEL1_IDS or t.id == EBML:
            if current is not None:
                clusters.append((tc, data[current : t.offset]))
                current = None
            if t.id == CLUSTER:
                current = t.offset
        elif t.id == TIMECODE and current is not None:
            tc = int.from_bytes(t.body, "big")
    if current is not None:
        clusters.append((tc, data[current:]))
    return header, clusters
