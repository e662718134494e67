from pbx_emulator.cli import pbx

pbx(prog_name="receiver-pbx")
