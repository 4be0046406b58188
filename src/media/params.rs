//! Parameter sets (VPS/SPS/PPS): the latest of each, learned in-band or from
//! the camera's SDP, and what the SDP and status need from them.

use std::num::NonZeroUsize;

use base64::Engine as _;
use bytes::Bytes;
use h264_reader::rbsp::{BitRead, BitReader, BitReaderError, ByteReader};

use super::{Codec, NalKind};

/// The latest parameter sets of a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamSets {
    pub vps: Option<Bytes>,
    pub sps: Option<Bytes>,
    pub pps: Option<Bytes>,
}

/// What a decoder-facing description says about the video.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct VideoInfo {
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Frames per second from the stream's timing information, if it has one.
    pub fps: Option<f64>,
}

impl ParamSets {
    /// Records `nal` if it is a parameter set; returns true if it changed one.
    pub fn update(&mut self, codec: Codec, nal: &Bytes) -> bool {
        let slot = match codec.classify(nal) {
            NalKind::Vps if codec == Codec::H265 => &mut self.vps,
            NalKind::Sps => &mut self.sps,
            NalKind::Pps => &mut self.pps,
            _ => return false,
        };
        if slot.as_ref() == Some(nal) {
            return false;
        }
        *slot = Some(nal.clone());
        true
    }

    /// True when every parameter set the codec needs is known.
    pub fn complete(&self, codec: Codec) -> bool {
        self.sps.is_some() && self.pps.is_some() && (codec == Codec::H264 || self.vps.is_some())
    }

    /// In the order a decoder needs them.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        [&self.vps, &self.sps, &self.pps]
            .into_iter()
            .filter_map(|p| p.as_ref())
    }

    /// The `a=fmtp` parameters (without the payload type) for this codec:
    /// RFC 6184 section 8.1 for H.264, RFC 7798 section 7.1 for H.265.
    pub fn fmtp(&self, codec: Codec) -> String {
        let b64 = |b: &Bytes| base64::engine::general_purpose::STANDARD.encode(b);
        match codec {
            Codec::H264 => {
                let mut f = String::from("packetization-mode=1");
                if let Some(sps) = self.sps.as_ref().filter(|s| s.len() >= 4) {
                    f.push_str(&format!(
                        ";profile-level-id={:02X}{:02X}{:02X}",
                        sps[1], sps[2], sps[3]
                    ));
                }
                if let (Some(sps), Some(pps)) = (&self.sps, &self.pps) {
                    f.push_str(&format!(";sprop-parameter-sets={},{}", b64(sps), b64(pps)));
                }
                f
            }
            Codec::H265 => {
                let mut parts = Vec::new();
                for (name, p) in [
                    ("sprop-vps", &self.vps),
                    ("sprop-sps", &self.sps),
                    ("sprop-pps", &self.pps),
                ] {
                    if let Some(p) = p {
                        parts.push(format!("{name}={}", b64(p)));
                    }
                }
                parts.join(";")
            }
        }
    }

    /// Picture size and frame rate, where the parameter sets say.
    pub fn video_info(&self, codec: Codec) -> VideoInfo {
        match codec {
            Codec::H264 => self.sps.as_ref().map(|s| h264_info(s)).unwrap_or_default(),
            Codec::H265 => {
                let mut info = VideoInfo::default();
                if let Some(Ok((w, h, fps))) = self.sps.as_ref().map(|s| h265_sps(s)) {
                    (info.width, info.height, info.fps) = (Some(w), Some(h), fps);
                }
                // The VPS may state timing where the SPS VUI does not.
                if info.fps.is_none() {
                    info.fps = self
                        .vps
                        .as_ref()
                        .and_then(|v| h265_vps_fps(v).ok().flatten());
                }
                info
            }
        }
    }
}

fn h264_info(sps: &[u8]) -> VideoInfo {
    let reader = BitReader::new(ByteReader::skipping_h264_header(sps));
    match h264_reader::nal::sps::SeqParameterSet::from_bits(reader) {
        Ok(sps) => {
            let (width, height) = sps
                .pixel_dimensions()
                .map_or((None, None), |(w, h)| (Some(w), Some(h)));
            VideoInfo {
                width,
                height,
                fps: sps
                    .fps()
                    .filter(|f| f.is_finite() && *f > 0.0 && *f <= 1000.0),
            }
        }
        Err(_) => VideoInfo::default(),
    }
}

fn h265_reader(nal: &[u8]) -> BitReader<ByteReader<&[u8]>> {
    BitReader::new(ByteReader::skipping_bytes(
        nal,
        NonZeroUsize::new(2).expect("2 is non-zero"),
    ))
}

/// Skips H.265 `profile_tier_level(1, max_sub_layers_minus1)` (7.3.3).
fn skip_profile_tier_level<R: BitRead>(
    r: &mut R,
    max_sub_layers_minus1: u8,
) -> Result<(), BitReaderError> {
    // general_profile_space..general_level_idc: 2+1+5+32+4+43+1+8 bits.
    r.skip(96, "general_profile_tier_level")?;
    let mut profile_present = [false; 8];
    let mut level_present = [false; 8];
    for i in 0..max_sub_layers_minus1 as usize {
        profile_present[i] = r.read_bit("sub_layer_profile_present_flag")?;
        level_present[i] = r.read_bit("sub_layer_level_present_flag")?;
    }
    if max_sub_layers_minus1 > 0 {
        for _ in max_sub_layers_minus1..8 {
            r.skip(2, "reserved_zero_2bits")?;
        }
    }
    for i in 0..max_sub_layers_minus1 as usize {
        if profile_present[i] {
            r.skip(88, "sub_layer_profile")?;
        }
        if level_present[i] {
            r.skip(8, "sub_layer_level_idc")?;
        }
    }
    Ok(())
}

/// What mcrelay reads from an H.265 SPS (7.3.2.2.1): the picture size,
/// cropped by the conformance window, and the VUI frame rate.
fn h265_sps(sps: &[u8]) -> Result<(u32, u32, Option<f64>), BitReaderError> {
    let mut r = h265_reader(sps);
    r.skip(4, "sps_video_parameter_set_id")?;
    let max_sub_layers_minus1: u8 = r.read::<3, u8>("sps_max_sub_layers_minus1")?;
    r.skip(1, "sps_temporal_id_nesting_flag")?;
    skip_profile_tier_level(&mut r, max_sub_layers_minus1.min(6))?;
    r.read_ue("sps_seq_parameter_set_id")?;
    let chroma_format_idc = r.read_ue("chroma_format_idc")?;
    if chroma_format_idc == 3 {
        r.skip(1, "separate_colour_plane_flag")?;
    }
    let mut width = r.read_ue("pic_width_in_luma_samples")?;
    let mut height = r.read_ue("pic_height_in_luma_samples")?;
    if r.read_bit("conformance_window_flag")? {
        let (sub_w, sub_h) = match chroma_format_idc {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let left = r.read_ue("conf_win_left_offset")?;
        let right = r.read_ue("conf_win_right_offset")?;
        let top = r.read_ue("conf_win_top_offset")?;
        let bottom = r.read_ue("conf_win_bottom_offset")?;
        // Offsets come from the camera: saturate, never wrap.
        width = width.saturating_sub(left.saturating_add(right).saturating_mul(sub_w));
        height = height.saturating_sub(top.saturating_add(bottom).saturating_mul(sub_h));
    }
    let fps = h265_sps_vui_fps(&mut r, max_sub_layers_minus1).unwrap_or(None);
    Ok((width, height, fps))
}

/// Continues an H.265 SPS after the conformance window up to the VUI timing
/// information (7.3.2.2.1, 7.3.7, E.2.1).
fn h265_sps_vui_fps<R: BitRead>(
    r: &mut R,
    max_sub_layers_minus1: u8,
) -> Result<Option<f64>, BitReaderError> {
    r.read_ue("bit_depth_luma_minus8")?;
    r.read_ue("bit_depth_chroma_minus8")?;
    // A value from the camera: 0..=12 in a valid stream; saturate, never wrap.
    let log2_max_poc_lsb = r
        .read_ue("log2_max_pic_order_cnt_lsb_minus4")?
        .saturating_add(4);
    let ordering_all = r.read_bit("sps_sub_layer_ordering_info_present_flag")?;
    let first = if ordering_all {
        0
    } else {
        max_sub_layers_minus1
    };
    for _ in first..=max_sub_layers_minus1 {
        r.read_ue("sps_max_dec_pic_buffering_minus1")?;
        r.read_ue("sps_max_num_reorder_pics")?;
        r.read_ue("sps_max_latency_increase_plus1")?;
    }
    for name in [
        "log2_min_luma_coding_block_size_minus3",
        "log2_diff_max_min_luma_coding_block_size",
        "log2_min_luma_transform_block_size_minus2",
        "log2_diff_max_min_luma_transform_block_size",
        "max_transform_hierarchy_depth_inter",
        "max_transform_hierarchy_depth_intra",
    ] {
        r.read_ue(name)?;
    }
    if r.read_bit("scaling_list_enabled_flag")?
        && r.read_bit("sps_scaling_list_data_present_flag")?
    {
        for size_id in 0..4u32 {
            let step = if size_id == 3 { 3 } else { 1 };
            for _ in (0..6).step_by(step) {
                if !r.read_bit("scaling_list_pred_mode_flag")? {
                    r.read_ue("scaling_list_pred_matrix_id_delta")?;
                } else {
                    let coefs = 64.min(1u32 << (4 + (size_id << 1)));
                    if size_id > 1 {
                        r.read_se("scaling_list_dc_coef_minus8")?;
                    }
                    for _ in 0..coefs {
                        r.read_se("scaling_list_delta_coef")?;
                    }
                }
            }
        }
    }
    r.skip(2, "amp_enabled_flag, sample_adaptive_offset_enabled_flag")?;
    if r.read_bit("pcm_enabled_flag")? {
        r.skip(8, "pcm_sample_bit_depths")?;
        r.read_ue("log2_min_pcm_luma_coding_block_size_minus3")?;
        r.read_ue("log2_diff_max_min_pcm_luma_coding_block_size")?;
        r.skip(1, "pcm_loop_filter_disabled_flag")?;
    }
    let num_sets = r.read_ue("num_short_term_ref_pic_sets")?;
    if num_sets > 64 {
        return Ok(None); // Out of range (7.4.3.2.1).
    }
    let mut num_delta_pocs: Vec<u32> = Vec::with_capacity(num_sets as usize);
    for idx in 0..num_sets as usize {
        let inter = idx != 0 && r.read_bit("inter_ref_pic_set_prediction_flag")?;
        let count = if inter {
            // In an SPS delta_idx_minus1 is absent: the reference is the previous set.
            r.skip(1, "delta_rps_sign")?;
            r.read_ue("abs_delta_rps_minus1")?;
            let mut count = 0;
            for _ in 0..=num_delta_pocs[idx - 1] {
                let used = r.read_bit("used_by_curr_pic_flag")?;
                if used || r.read_bit("use_delta_flag")? {
                    count += 1;
                }
            }
            count
        } else {
            let neg = r.read_ue("num_negative_pics")?;
            let pos = r.read_ue("num_positive_pics")?;
            if neg > 16 || pos > 16 {
                return Ok(None);
            }
            for _ in 0..neg + pos {
                r.read_ue("delta_poc_minus1")?;
                r.skip(1, "used_by_curr_pic_flag")?;
            }
            neg + pos
        };
        num_delta_pocs.push(count);
    }
    if r.read_bit("long_term_ref_pics_present_flag")? {
        let n = r.read_ue("num_long_term_ref_pics_sps")?;
        if n > 32 {
            return Ok(None);
        }
        for _ in 0..n {
            r.skip(log2_max_poc_lsb, "lt_ref_pic_poc_lsb_sps")?;
            r.skip(1, "used_by_curr_pic_lt_sps_flag")?;
        }
    }
    r.skip(
        2,
        "sps_temporal_mvp_enabled_flag, strong_intra_smoothing_enabled_flag",
    )?;
    if !r.read_bit("vui_parameters_present_flag")? {
        return Ok(None);
    }
    if r.read_bit("aspect_ratio_info_present_flag")? && r.read::<8, u8>("aspect_ratio_idc")? == 255
    {
        r.skip(32, "sar_width, sar_height")?;
    }
    if r.read_bit("overscan_info_present_flag")? {
        r.skip(1, "overscan_appropriate_flag")?;
    }
    if r.read_bit("video_signal_type_present_flag")? {
        r.skip(4, "video_format, video_full_range_flag")?;
        if r.read_bit("colour_description_present_flag")? {
            r.skip(24, "colour_primaries..matrix_coeffs")?;
        }
    }
    if r.read_bit("chroma_loc_info_present_flag")? {
        r.read_ue("chroma_sample_loc_type_top_field")?;
        r.read_ue("chroma_sample_loc_type_bottom_field")?;
    }
    r.skip(
        3,
        "neutral_chroma_indication_flag, field_seq_flag, frame_field_info_present_flag",
    )?;
    if r.read_bit("default_display_window_flag")? {
        for _ in 0..4 {
            r.read_ue("def_disp_win_offset")?;
        }
    }
    if !r.read_bit("vui_timing_info_present_flag")? {
        return Ok(None);
    }
    let num_units_in_tick: u32 = r.read::<32, u32>("vui_num_units_in_tick")?;
    let time_scale: u32 = r.read::<32, u32>("vui_time_scale")?;
    Ok(fps_of(num_units_in_tick, time_scale))
}

/// H.265 timing: one tick per picture (unlike H.264's field ticks).
fn fps_of(num_units_in_tick: u32, time_scale: u32) -> Option<f64> {
    if num_units_in_tick == 0 {
        return None;
    }
    Some(f64::from(time_scale) / f64::from(num_units_in_tick)).filter(|f| *f > 0.0 && *f <= 1000.0)
}

/// Frame rate from an H.265 VPS's timing information (7.3.2.1), if present.
fn h265_vps_fps(vps: &[u8]) -> Result<Option<f64>, BitReaderError> {
    let mut r = h265_reader(vps);
    r.skip(4 + 1 + 1 + 6, "vps_id..vps_max_layers_minus1")?;
    let max_sub_layers_minus1: u8 = r.read::<3, u8>("vps_max_sub_layers_minus1")?;
    r.skip(
        1 + 16,
        "vps_temporal_id_nesting_flag, vps_reserved_0xffff_16bits",
    )?;
    skip_profile_tier_level(&mut r, max_sub_layers_minus1.min(6))?;
    let ordering_all = r.read_bit("vps_sub_layer_ordering_info_present_flag")?;
    let first = if ordering_all {
        0
    } else {
        max_sub_layers_minus1
    };
    for _ in first..=max_sub_layers_minus1 {
        r.read_ue("vps_max_dec_pic_buffering_minus1")?;
        r.read_ue("vps_max_num_reorder_pics")?;
        r.read_ue("vps_max_latency_increase_plus1")?;
    }
    let max_layer_id: u8 = r.read::<6, u8>("vps_max_layer_id")?;
    let num_layer_sets_minus1 = r.read_ue("vps_num_layer_sets_minus1")?;
    if num_layer_sets_minus1 > 1023 {
        return Ok(None); // Out of range (7.4.3.1); don't walk a garbage loop.
    }
    for _ in 0..num_layer_sets_minus1 {
        r.skip(u32::from(max_layer_id) + 1, "layer_id_included_flag")?;
    }
    if !r.read_bit("vps_timing_info_present_flag")? {
        return Ok(None);
    }
    let num_units_in_tick: u32 = r.read::<32, u32>("vps_num_units_in_tick")?;
    let time_scale: u32 = r.read::<32, u32>("vps_time_scale")?;
    Ok(fps_of(num_units_in_tick, time_scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    // From the shipped camera clips (640x360, 25 fps; x264 main profile, x265 main).
    const H264_SPS: &[u8] = &[
        0x67, 0x4d, 0x40, 0x1e, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00,
        0x04, 0x00, 0x00, 0x03, 0x00, 0xc8, 0x3c, 0x58, 0xba, 0x80,
    ];
    const H264_PPS: &[u8] = &[0x68, 0xef, 0x32, 0xc8];
    const H265_VPS: &[u8] = &[
        0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00,
        0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0xba, 0x02, 0x40,
    ];
    const H265_SPS: &[u8] = &[
        0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x03, 0x00, 0x3f, 0xa0, 0x05, 0x02, 0x01, 0x69, 0x65, 0xba, 0x92, 0x4c, 0xaf, 0x01, 0x68,
        0x08, 0x00, 0x00, 0x03, 0x00, 0x08, 0x00, 0x00, 0x03, 0x00, 0xc8, 0x40,
    ];
    const H265_PPS: &[u8] = &[0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40];

    #[test]
    fn h264_fmtp_and_info() {
        let mut p = ParamSets::default();
        assert!(p.update(Codec::H264, &Bytes::from_static(H264_SPS)));
        assert!(!p.update(Codec::H264, &Bytes::from_static(H264_SPS)));
        assert!(!p.complete(Codec::H264));
        assert!(p.update(Codec::H264, &Bytes::from_static(H264_PPS)));
        assert!(p.complete(Codec::H264));
        let fmtp = p.fmtp(Codec::H264);
        assert!(fmtp.starts_with("packetization-mode=1;profile-level-id=4D401E;sprop-parameter-sets=Z01AHtoCgL/lwEQAAAMABAAAAwDIPFi6gA==,"), "{fmtp}");
        assert!(fmtp.ends_with(",aO8yyA=="), "{fmtp}");
        let info = p.video_info(Codec::H264);
        assert_eq!((info.width, info.height), (Some(640), Some(360)));
        assert_eq!(info.fps, Some(25.0));
    }

    #[test]
    fn h265_fmtp_and_info() {
        let mut p = ParamSets::default();
        for nal in [H265_VPS, H265_SPS, H265_PPS] {
            assert!(p.update(Codec::H265, &Bytes::copy_from_slice(nal)));
        }
        assert!(p.complete(Codec::H265));
        let fmtp = p.fmtp(Codec::H265);
        assert!(fmtp.starts_with("sprop-vps=QAEMAf//"), "{fmtp}");
        assert!(fmtp.contains(";sprop-sps=QgEBAW"), "{fmtp}");
        assert!(fmtp.ends_with(";sprop-pps=RAHBcrRiQA=="), "{fmtp}");
        let info = p.video_info(Codec::H265);
        assert_eq!((info.width, info.height), (Some(640), Some(360)));
        assert_eq!(info.fps, Some(25.0));
        assert_eq!(p.iter().count(), 3);
    }

    /// Bits, MSB first, with Exp-Golomb codes (for crafted parameter sets).
    #[derive(Default)]
    struct Bits(Vec<bool>);

    impl Bits {
        fn put(&mut self, v: u64, n: u32) -> &mut Self {
            for i in (0..n).rev() {
                self.0.push(v >> i & 1 == 1);
            }
            self
        }
        fn ue(&mut self, v: u32) -> &mut Self {
            let x = u64::from(v) + 1;
            let n = 64 - x.leading_zeros();
            self.put(0, n - 1).put(x, n)
        }
        fn bytes(&self) -> Vec<u8> {
            self.0
                .chunks(8)
                .map(|c| {
                    c.iter()
                        .enumerate()
                        .fold(0u8, |b, (i, &bit)| b | (u8::from(bit) << (7 - i)))
                })
                .collect()
        }
    }

    #[test]
    fn absurd_conformance_offsets_saturate_instead_of_wrapping() {
        let mut b = Bits::default();
        b.put(0, 4).put(0, 3).put(1, 1); // vps id, max_sub_layers_minus1, nesting
        b.put(0x5555, 16)
            .put(0x5555_5555_5555_5555, 64)
            .put(0x5555, 16); // profile_tier_level
        b.ue(0).ue(1).ue(640).ue(360).put(1, 1); // sps id, 4:2:0, size, window
        for _ in 0..4 {
            b.ue(u32::MAX - 1); // offsets that overflow when added and doubled
        }
        b.ue(u32::MAX - 1); // bit depth: nonsense, then the data ends
        // Emulation prevention: no 00 00 0x (x <= 3) in a NAL unit.
        let mut sps = vec![0x42, 0x01];
        for byte in b.bytes() {
            if sps.ends_with(&[0, 0]) && byte <= 3 {
                sps.push(3);
            }
            sps.push(byte);
        }
        let (w, h, fps) = h265_sps(&sps).expect("parses up to the window");
        assert_eq!((w, h, fps), (0, 0, None));
    }

    #[test]
    fn garbage_parameter_sets_give_no_info_and_no_panic() {
        let mut p = ParamSets::default();
        p.update(Codec::H265, &Bytes::from_static(&[0x40, 0x01, 0xff, 0xff]));
        p.update(Codec::H265, &Bytes::from_static(&[0x42, 0x01, 0x01]));
        assert_eq!(p.video_info(Codec::H265), VideoInfo::default());
        p.update(Codec::H264, &Bytes::from_static(&[0x67, 0x00]));
        assert_eq!(p.video_info(Codec::H264), VideoInfo::default());
    }
}
