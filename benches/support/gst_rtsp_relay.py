#!/usr/bin/python3
"""GStreamer's RTSP server as a shared TCP fan-out relay, for mcrelay-bench.

Usage: gst_rtsp_relay.py ADDRESS PORT SOURCE_URL CHANNELS

Serves rtsp://ADDRESS:PORT/1 .. /CHANNELS, each one shared media that pulls
SOURCE_URL once over RTSP/TCP and repacketizes it (as mcrelay does) for every
client. Run with Debian's /usr/bin/python3 (python3-gi).
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
address, port, source, channels = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
server = GstRtspServer.RTSPServer()
server.set_address(address)
server.set_service(port)
mounts = server.get_mount_points()
for ch in range(1, channels + 1):
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( rtspsrc location={source} protocols=tcp latency=100 ! rtph264depay ! h264parse "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 mtu=1412 )"
    )
    factory.set_shared(True)
    mounts.add_factory(f"/{ch}", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on {address}:{port}")
GLib.MainLoop().run()
