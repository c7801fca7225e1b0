"""Offline evaluation: SMIYC / LostAndFound metrics, rosbag conversion and replay scoring."""
