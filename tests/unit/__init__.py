"""Tests that need no root and no lab: any user, seconds."""
