"""The rows ``embedlib evaluate`` scores (planted or labelled), read and scored with Spark."""
