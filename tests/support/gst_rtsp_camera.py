#!/usr/bin/python3
"""An RTSP camera that is not mcrelay's: GStreamer's RTSP server.

Usage: gst_rtsp_camera.py PORT PATH CODEC[+AUDIO] [USER PASSWORD]

Serves a live test pattern (640x360, 25 fps, 1 s GOP) encoded with x264 or
x265 (h264b: x264 with two B-frames between references) at
rtsp://127.0.0.1:PORT/PATH, with Digest authentication when USER and
PASSWORD are given. With +aac or +pcmu (e.g. h264+aac) the media has a
second stream: a 440 Hz tone as AAC (48 kHz mono, RFC 3640 AAC-hbr) or
G.711 mu-law (8 kHz). Run it with Debian's /usr/bin/python3 (python3-gi).
Prints "ready" once listening.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

Gst.init(None)
port, path = sys.argv[1], sys.argv[2]
codec, _, audio = sys.argv[3].partition("+")
enc = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=400 "
            "! video/x-h264,profile=main ! rtph264pay name=pay0 pt=96 config-interval=-1",
    # B-frames: decode order differs from presentation order (IBBP, no
    # pyramid), as some cameras' "high efficiency" modes send.
    "h264b": "x264enc speed-preset=superfast bframes=2 b-adapt=false b-pyramid=false "
             "key-int-max=25 bitrate=400 ! video/x-h264,profile=main "
             "! rtph264pay name=pay0 pt=96 config-interval=-1",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=400 "
            "! rtph265pay name=pay0 pt=96 config-interval=-1",
}[codec]
tone = "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample "
sound = {
    "": "",
    "aac": tone + "! audio/x-raw,format=S16LE,rate=48000,channels=1 ! voaacenc bitrate=64000 "
           "! rtpmp4gpay name=pay1 pt=97",
    "pcmu": tone + "! audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay name=pay1",
}[audio]
launch = (
    "( videotestsrc is-live=true pattern=ball "
    "! video/x-raw,width=640,height=360,framerate=25/1 ! " + enc + " " + sound + " )"
)

server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(launch)
factory.set_shared(True)

if len(sys.argv) >= 6:
    user, password = sys.argv[4], sys.argv[5]
    auth = GstRtspServer.RTSPAuth()
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
    auth.add_digest(user, password, token)
    server.set_auth(auth)
    perms = GstRtspServer.RTSPPermissions()
    perms.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    perms.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
    factory.set_permissions(perms)

server.get_mount_points().add_factory("/" + path, factory)
if server.attach(None) == 0:
    sys.exit("cannot listen on 127.0.0.1:" + port)
print("ready", flush=True)
GLib.MainLoop().run()
