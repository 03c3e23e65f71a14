"""The service layer between PBX adapters and the store."""
