// A ROM initialised from a bundle's .mem file by $readmemh, the way a synthesis flow reads it
// (Vivado UG901: the file holds data only, one word per line, as many lines as DEPTH). The
// file's path comes from the plusarg +INIT=<path> (a synthesis top would name it directly:
// initial $readmemh("weight.mem", rom);).
`timescale 1ns / 1ps

module wageubn_rom #(
    parameter WIDTH = 8,
    parameter DEPTH = 16,
    parameter ADDR_BITS = 16
) (
    input  wire                 clk,
    input  wire [ADDR_BITS-1:0] addr,
    output reg  [WIDTH-1:0]     data
);
    reg [WIDTH-1:0] rom [0:DEPTH-1];
    reg [8*1024-1:0] init_file;

    initial begin
        if (!$value$plusargs("INIT=%s", init_file)) begin
            $display("wageubn_rom: give the .mem file as +INIT=<path>");
            $finish;
        end
        $readmemh(init_file, rom);
    end

    always @(posedge clk)
        data <= rom[addr];
endmodule
